#!/usr/bin/env bash
# Score a model folder on the held-out ShapeWorld benchmark: runner -> automatic judge -> leaderboard.
#   scripts/tiny/eval.sh MODEL_FOLDER RESULT_DIR [extra benchmark flags, e.g. --num_timesteps 10]
# Needs the world: run scripts/tiny/make_data.sh first (same WORK / DATA_ROOT).
# EVAL_CASES (default 150 = 25 per task type) takes the first cases of the 300 written by make_data.sh
# (the generator is prefix-stable: they are exactly the cases `--num_eval 150` would draw).
set -euo pipefail
source "$(dirname "$0")/common.sh"
if [ $# -lt 2 ]; then
  echo "usage: scripts/tiny/eval.sh MODEL_FOLDER RESULT_DIR [benchmark flags]" >&2; exit 2
fi
MODEL=$1; OUT=$2; shift 2
EVAL_CASES=${EVAL_CASES:-150}
FULL="$DATA_ROOT/shapeworld/bench"
BENCH="$DATA_ROOT/shapeworld/bench_first$EVAL_CASES"
# inputs first, so that nothing is written when one is missing
if [ ! -f "$FULL/data.jsonl" ]; then
  echo "ERROR: no ShapeWorld benchmark at $FULL (run scripts/tiny/make_data.sh first, with the same WORK/DATA_ROOT)" >&2
  exit 2
fi
if [ ! -d "$MODEL" ]; then
  echo "ERROR: model folder not found: $MODEL" >&2; exit 2
fi
if [ ! -f "$BENCH/data.jsonl" ]; then
  # built in a temporary folder and renamed: an interruption leaves no half-made benchmark
  TMP="$BENCH.tmp.$$"
  rm -rf "$TMP"; mkdir -p "$TMP"
  ln -sfn "$(cd "$FULL" && pwd)/images" "$TMP/images"
  ln -sfn "$(cd "$FULL" && pwd)/ground_truth" "$TMP/ground_truth"
  head -n "$EVAL_CASES" "$FULL/data.jsonl" > "$TMP/data.jsonl"
  rm -rf "$BENCH"; mv "$TMP" "$BENCH"
fi
$PYTHON -m eval.generate --model_path "$MODEL" --benchmark_dir "$BENCH" \
  --output_dir "$OUT" --seed 0 --batch_size 8 --no_progress "$@"
$PYTHON -m eval.shapeworld --bench_dir "$BENCH" --result_dir "$OUT" --no_progress
