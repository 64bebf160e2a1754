#!/usr/bin/env bash
# Score a model folder on the held-out ShapeWorld benchmark: runner -> automatic judge -> leaderboard.
#   scripts/tiny/eval.sh MODEL_FOLDER RESULT_DIR [extra benchmark flags, e.g. --limit 60]
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=$1; OUT=$2; shift 2
$PYTHON -m inference.benchmark --model_path "$MODEL" --benchmark_dir "$DATA_ROOT/shapeworld/bench" \
  --output_dir "$OUT" --seed 0 --batch_size 8 "$@"
$PYTHON -m eval.shapeworld --bench_dir "$DATA_ROOT/shapeworld/bench" --result_dir "$OUT"
