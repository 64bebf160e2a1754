"""One leaderboard table from several judged runs (the README's ShapeWorld table).

    python scripts/tiny/leaderboard.py "untrained=ckpts/tiny-work/eval/untrained" "Stage I=ckpts/tiny-work/eval/stage1"

Each argument is ``label=RESULT_DIR``; the row is the leaderboard row that ``python -m eval.shapeworld``
wrote to ``RESULT_DIR/shapeworld_scores/scores.md`` (same columns for every run), relabelled.
"""

from __future__ import annotations

import sys
from pathlib import Path


def leaderboard_rows(scores_md: Path) -> tuple[str, str]:
    """(header line, row line) of the first Markdown table in a scores.md."""
    lines = [ln for ln in scores_md.read_text().splitlines() if ln.startswith("|")]
    if len(lines) < 3:
        raise ValueError(f"{scores_md}: no leaderboard table")
    return lines[0], lines[2]


def main(argv: list[str]) -> int:
    if not argv or any("=" not in a for a in argv):
        sys.stderr.write(__doc__)
        return 2
    header = None
    rows = []
    for arg in argv:
        label, path = arg.rsplit("=", 1)  # labels may hold "=", paths do not
        head, row = leaderboard_rows(Path(path) / "shapeworld_scores" / "scores.md")
        if header is not None and head != header:
            raise ValueError(f"{path}: different columns than the first run")
        header = head
        cells = row.split("|")
        cells[1] = f" {label} "
        rows.append("|".join(cells))
    sep = "|" + "|".join(" --- " for _ in header.strip("|").split("|")) + "|"
    sys.stdout.write("\n".join([header, sep, *rows]) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
