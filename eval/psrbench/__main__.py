"""``python -m eval.psrbench``: the PSRBench evaluator (the same command as ``python -m eval.psrbench.evaluate``)."""

import sys

from eval.psrbench.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
