#!/usr/bin/env bash
# Score SconeEval images with an OpenAI-compatible judge (key in $OPENAI_API_KEY, never logged).
# Rerun the same command after an interruption: finished judgements come from the cache (no new calls).
# Usage: bash scripts/eval_sconeeval.sh [extra eval.sconeeval args, e.g. --base_url URL, --protocol authors
#        (the authors' prompts, for the paper's numbers), --batch_api (half price)]
set -euo pipefail
BENCH_DIR=${BENCH_DIR:-datasets/SconeEval}
RESULT_DIR=${RESULT_DIR:-results/sconeeval/Scone}
SCORE_DIR=${SCORE_DIR:-$RESULT_DIR/scores}
JUDGE_MODEL=${JUDGE_MODEL:-gpt-4.1-2025-04-14}
METHOD=${METHOD:-Scone}

python -m eval.sconeeval --benchmark_dir "$BENCH_DIR" --result_dir "$RESULT_DIR" --output_dir "$SCORE_DIR" \
  --judge_model "$JUDGE_MODEL" --method "$METHOD" --scorings "${SCORINGS:-3}" "$@"
