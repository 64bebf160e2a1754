#!/usr/bin/env bash
# Score OmniContext images with an OpenAI-compatible judge (key in $OPENAI_API_KEY, never logged).
# Rerun the same command after an interruption: finished judgements come from the cache (no new calls).
# Usage: bash scripts/eval_omnicontext.sh [extra eval.omnicontext args, e.g. --scorings 3 --base_url URL,
#        --protocol authors [--authors_upstream omnigen2], --batch_api]
set -euo pipefail
BENCH_DIR=${BENCH_DIR:-datasets/OmniContext-jsonl}
RESULT_DIR=${RESULT_DIR:-results/omnicontext/Scone}
SCORE_DIR=${SCORE_DIR:-$RESULT_DIR/scores}
JUDGE_MODEL=${JUDGE_MODEL:-gpt-4.1-2025-04-14}
METHOD=${METHOD:-Scone}

python -m eval.omnicontext --benchmark_dir "$BENCH_DIR" --result_dir "$RESULT_DIR" --output_dir "$SCORE_DIR" \
  --judge_model "$JUDGE_MODEL" --method "$METHOD" "$@"
