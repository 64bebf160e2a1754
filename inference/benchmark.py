"""``python -m inference.benchmark``: benchmark generation, the same command as ``python -m eval.generate``
(the original repository's script name, kept for users' commands and scripts). See ``eval/generate.py``."""

from __future__ import annotations

import sys

from eval.generate import main

if __name__ == "__main__":
    sys.exit(main())
