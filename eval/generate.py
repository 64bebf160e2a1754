"""``python -m eval.generate``: the benchmark generation runner (``inference/benchmark.py``) under the name the
evaluation scripts use. A command-line alias: nothing imports it."""

from __future__ import annotations

import sys

from inference.benchmark import main

if __name__ == "__main__":
    sys.exit(main())
