#!/usr/bin/env bash
# Scone Stage I, Step 1 — composition on the base single-candidate data (paper: 1 epoch, ~30 h on 8 GPUs).
# Starts from BAGEL-7B-MoT's EMA weights; trains the whole LLM (und + gen experts), connector, vae2llm,
# llm2vae and the timestep embedder (ViT frozen). The step folder 0006000 is what Stage I Step 2 loads.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-./ckpts/BAGEL-7B-MoT}
EXP_NAME=${EXP_NAME:-Scone_stage1_step1}
TOTAL_STEPS=${TOTAL_STEPS:-6001}           # last step index 6000 -> folder 0006000 (upstream stopped there)
WARMUP_STEPS=${WARMUP_STEPS:-2000}         # upstream default; reached after a third of this stage

source "$(dirname "$0")/train_common.sh"
run_scone_stage data/configs/scone_stage1_step1.yaml True \
  --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False
