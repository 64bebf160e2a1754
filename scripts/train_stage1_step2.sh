#!/usr/bin/env bash
# Scone Stage I, Step 2 — composition on the refined single-candidate data (paper: 1 epoch, ~15 h).
# Starts from Stage I Step 1's folder 0006000 (a complete released-layout folder: our step folders carry
# llm_config.json, vit_config.json, ae.safetensors and the tokenizer; upstream's did not).
# Trains the same parameters as Step 1.
#
# Deviation from upstream: warmup 200 instead of the default 2000. Every stage restarts the scheduler
# (--resume_model_only), and with 2000 warmup steps this 2000-step stage would end exactly when the LR
# first reaches 2e-5. Set WARMUP_STEPS=2000 to reproduce upstream.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage1_step1/0006000}
EXP_NAME=${EXP_NAME:-Scone_stage1_step2}
TOTAL_STEPS=${TOTAL_STEPS:-2001}           # -> folder 0002000, which Stage II Step 1 loads
WARMUP_STEPS=${WARMUP_STEPS:-200}

source "$(dirname "$0")/train_common.sh"
run_scone_stage data/configs/scone_stage1_step2.yaml False \
  --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False
