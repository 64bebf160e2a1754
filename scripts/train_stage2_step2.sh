#!/usr/bin/env bash
# Scone Stage II, Step 2 — distinction (paper: 1k steps, ~5 h). Starts from Stage II Step 1's 0001000.
#
# Deviations from upstream:
# * Freezing follows the paper/README ("Und., Gen." both trained): no expert or bridge is frozen (ViT
#   stays frozen). Upstream's script passed --freeze_llm_und/--freeze_llm_gen/--freeze_mlp_und/
#   --freeze_mlp_gen True, which trains only embed_tokens and the timestep embedder. To reproduce
#   that, run with EXTRA_ARGS="--freeze_llm_und True --freeze_llm_gen True --freeze_mlp_und True --freeze_mlp_gen True".
# * Data: refined + multi-candidate (see train_stage2_step1.sh).
# * Warmup 100 instead of 2000 (see train_stage2_step1.sh).
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage2_step1/0001000}
EXP_NAME=${EXP_NAME:-Scone_stage2_step2}
TOTAL_STEPS=${TOTAL_STEPS:-1001}           # -> folder 0001000 = the final Scone model folder
WARMUP_STEPS=${WARMUP_STEPS:-100}

source "$(dirname "$0")/train_common.sh"
run_scone_stage data/configs/scone_stage2.yaml False \
  --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False
