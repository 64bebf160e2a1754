#!/usr/bin/env bash
# Generate OmniContext images (Scone settings, 1024x1024) on all local GPUs.
# Usage: bash scripts/inference_omnicontext.sh [extra eval.generate args, e.g. --rounds 3 --batch_size 2]
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-ckpts/Scone}
BENCH_DIR=${BENCH_DIR:-datasets/OmniContext-jsonl}
OUTPUT_DIR=${OUTPUT_DIR:-results/omnicontext/Scone}
NGPUS=${NGPUS:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
SEED=${SEED:-1234}

torchrun --standalone --nproc_per_node "$NGPUS" -m eval.generate \
  --model_path "$MODEL_PATH" --benchmark_dir "$BENCH_DIR" --output_dir "$OUTPUT_DIR" --seed "$SEED" "$@"
