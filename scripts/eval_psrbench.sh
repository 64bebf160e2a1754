#!/usr/bin/env bash
# Score PSRBench generations: subject consistency (Grounding DINO + DINO ViT-S/16), position alignment,
# semantic alignment (Qwen2.5-VL judge) and HPSv3 aesthetics (skipped, and reported so, without the
# hpsv3 package or a GPU). One report per sampling round: {RESULTS_DIR}/round{i}/eval/summary.{md,csv,json}.
#
# Start the judge first (either server works; the model name must match --judge_model):
#   vllm serve Qwen/Qwen2.5-VL-7B-Instruct --port 17140 --api-key psr --max-model-len 16384
#   python -m sglang.launch_server --model-path Qwen/Qwen2.5-VL-7B-Instruct --port 17140 --api-key psr \
#       --chat-template qwen2-vl --mem-fraction-static 0.85
#   export PSR_JUDGE_API_KEY=psr
# Without a judge server pass: --metrics sc position aesthetics. The PSR scripts' scoring: --protocol authors
set -euo pipefail
DATA_ROOT=${DATA_ROOT:-./datasets/PSRBench}
RESULTS_DIR=${RESULTS_DIR:-./results/psrbench/Scone}
JUDGE_MODEL=${JUDGE_MODEL:-Qwen/Qwen2.5-VL-7B-Instruct}
JUDGE_URL=${JUDGE_URL:-http://127.0.0.1:17140/v1}
shopt -s nullglob
rounds=("$RESULTS_DIR"/round*/)
[ ${#rounds[@]} -gt 0 ] || rounds=("$RESULTS_DIR/")
for dir in "${rounds[@]}"; do
    python -m eval.psrbench.evaluate \
        --data_root "$DATA_ROOT" \
        --results_dir "$dir" \
        --judge_model "$JUDGE_MODEL" \
        --base_url "$JUDGE_URL" \
        --detector "${DETECTOR:-IDEA-Research/grounding-dino-tiny}" \
        --feature_model "${FEATURE_MODEL:-facebook/dino-vits16}" "$@"
done
