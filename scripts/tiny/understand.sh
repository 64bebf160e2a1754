#!/usr/bin/env bash
# 6. The understanding stage: a trained tiny Scone (FROM, default this WORK's final Stage II model with the
# mask, as run_all.sh UNDERSTAND=1 uses; FROM=ckpts/scone-tiny trains the shipped model, which went through
# this stage, further) learns to answer questions about its references and to plan in think mode, while it
# keeps training on generation:
# data/configs/shapeworld_understand.yaml (world generation data, the same cases with a plan, questions
# with known answers), everything trained, mask off, LR warm-restarted at 1e-3 (cosine to 1e-4) as in the
# long Stage II. UNDERSTAND_STEPS (default 3000). Needs make_data.sh's questions and plans.
set -euo pipefail
source "$(dirname "$0")/common.sh"
FROM=${FROM:-$(stage2_final mask)}
if [ ! -d "$FROM" ]; then
  echo "ERROR: no model folder at $FROM: train Stage I and II first with the same WORK and LONG_STAGE2" \
    "(scripts/tiny/run_all.sh), or give FROM=folder" >&2
  exit 2
fi
run_tiny_stage data/configs/shapeworld_understand.yaml "$FROM" stage_u "$U_STEPS" "$(scaled 100)" 1e-3 \
  --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False
# VQA_ONLY_STEPS=N (> 0): then a diagnostic of N steps on questions alone (data/configs/shapeworld_vqa_only.yaml),
# generation expert frozen, into stage_u_vqa_only: can the understanding side read its references at all?
if [ "$VQA_ONLY_STEPS" -gt 0 ]; then
  N=$(scaled "$VQA_ONLY_STEPS")
  run_tiny_stage data/configs/shapeworld_vqa_only.yaml "$(last_folder stage_u "$U_STEPS")" stage_u_vqa_only "$N" \
    "$(scaled 50)" 1e-3 --freeze_llm_und False --freeze_llm_gen True --freeze_mlp_und False --freeze_mlp_gen True
fi
# REALIGN_STEPS=N (> 0, after VQA_ONLY_STEPS): everything trained again on generation, plans and three
# times the questions (data/configs/shapeworld_understand_realign.yaml) from the questions-only step, into
# stage_u_realign: the generator realigns with the changed understanding side.
if [ "$REALIGN_STEPS" -gt 0 ]; then
  if [ "$VQA_ONLY_STEPS" -le 0 ]; then echo "ERROR: REALIGN_STEPS needs VQA_ONLY_STEPS > 0" >&2; exit 2; fi
  run_tiny_stage data/configs/shapeworld_understand_realign.yaml \
    "$(last_folder stage_u_vqa_only "$(scaled "$VQA_ONLY_STEPS")")" stage_u_realign "$(scaled "$REALIGN_STEPS")" \
    "$(scaled 50)" 5e-4 --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False
fi
