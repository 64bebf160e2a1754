#!/usr/bin/env bash
# Scone Stage II, Step 1 — distinction + understanding bridge (paper: 1k steps, ~5 h).
# Starts from Stage I Step 2's folder 0002000. Generation expert and its bridges (vae2llm, llm2vae)
# frozen; understanding expert, token embeddings, connector and timestep embedder train; the semantic
# mask (understanding bridge) is on. ViT frozen.
#
# Deviations from upstream:
# * Data: data/configs/scone_stage2.yaml pairs refined [22] + multi-candidate [36] files. Upstream's YAML
#   had num_used_data [58] for two datasets, and zip() silently dropped the multi-candidate data.
# * Warmup 100 instead of 2000: with 2000 the LR of this 1000-step stage would only ramp to 1e-5.
#   Set WARMUP_STEPS=2000 to reproduce upstream.
# Note: time_embedder stays trainable (no flag freezes it), as upstream.
set -euo pipefail

MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage1_step2/0002000}
EXP_NAME=${EXP_NAME:-Scone_stage2_step1}
TOTAL_STEPS=${TOTAL_STEPS:-1001}           # -> folder 0001000, which Stage II Step 2 loads
WARMUP_STEPS=${WARMUP_STEPS:-100}

source "$(dirname "$0")/train_common.sh"
run_scone_stage data/configs/scone_stage2.yaml False \
  --freeze_llm_und False --freeze_llm_gen True --freeze_mlp_und False --freeze_mlp_gen True --use_semantic_mask True
