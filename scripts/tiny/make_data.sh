#!/usr/bin/env bash
# 1. The world: 24,000 training cases (Scone-S2I parquet layout) + 300 held-out benchmark cases, 100,000
#    questions about training references and 4,000 cases with a think plan (understand.sh), questions about
#    100 cases of the held-out world of seed 1 (eval/shapeworld_vqa.py); NUM_VLM=N adds captions of N
#    training reference images (vlm_sft JSONL, for shapeworld_stage2_vlm.yaml).
set -euo pipefail
source "$(dirname "$0")/common.sh"
NUM_TRAIN=${NUM_TRAIN:-24000}
NUM_EVAL=${NUM_EVAL:-300}
$PYTHON -m data.synthetic.make_shapeworld --out "$DATA_ROOT/shapeworld" --num_train "$NUM_TRAIN" \
  --num_eval "$NUM_EVAL" --seed 0 --rows_per_file 250 --num_vlm "${NUM_VLM:-0}" \
  --num_vqa "${NUM_VQA:-100000}" --num_vqa_eval "${NUM_VQA_EVAL:-100}" --num_think "${NUM_THINK:-4000}" --overwrite
