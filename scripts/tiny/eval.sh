#!/usr/bin/env bash
# Score a model folder on the held-out ShapeWorld benchmark: runner -> automatic judge -> leaderboard.
#   scripts/tiny/eval.sh MODEL_FOLDER RESULT_DIR [extra benchmark flags, e.g. --num_timesteps 10]
# EVAL_CASES (default 150 = 25 per task type) takes the first cases of the 300 written by make_data.sh
# (the generator is prefix-stable: they are exactly the cases `--num_eval 150` would draw).
set -euo pipefail
source "$(dirname "$0")/common.sh"
MODEL=$1; OUT=$2; shift 2
EVAL_CASES=${EVAL_CASES:-150}
FULL="$DATA_ROOT/shapeworld/bench"
BENCH="$DATA_ROOT/shapeworld/bench_first$EVAL_CASES"
if [ ! -f "$BENCH/data.jsonl" ]; then
  mkdir -p "$BENCH"
  ln -sfn "$(cd "$FULL" && pwd)/images" "$BENCH/images"
  ln -sfn "$(cd "$FULL" && pwd)/ground_truth" "$BENCH/ground_truth"
  head -n "$EVAL_CASES" "$FULL/data.jsonl" > "$BENCH/data.jsonl.tmp" && mv "$BENCH/data.jsonl.tmp" "$BENCH/data.jsonl"
fi
$PYTHON -m eval.generate --model_path "$MODEL" --benchmark_dir "$BENCH" \
  --output_dir "$OUT" --seed 0 --batch_size 8 --no_progress "$@"
$PYTHON -m eval.shapeworld --bench_dir "$BENCH" --result_dir "$OUT" --no_progress
