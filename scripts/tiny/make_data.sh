#!/usr/bin/env bash
# 1. The world: 24,000 training cases (Scone-S2I parquet layout) + 300 held-out benchmark cases; NUM_VLM=N
#    adds captions of N training reference images (vlm_sft JSONL, for shapeworld_stage2_vlm.yaml).
set -euo pipefail
source "$(dirname "$0")/common.sh"
NUM_TRAIN=${NUM_TRAIN:-24000}
NUM_EVAL=${NUM_EVAL:-300}
$PYTHON -m data.synthetic.make_shapeworld --out "$DATA_ROOT/shapeworld" --num_train "$NUM_TRAIN" \
  --num_eval "$NUM_EVAL" --seed 0 --rows_per_file 250 --num_vlm "${NUM_VLM:-0}" --overwrite
