#!/usr/bin/env bash
# 3. Stage I (composition) on single-candidate world data: step 1 from the random init, step 2 a shorter
# continuation at a lower LR (the world has no separate "refined" set; see docs/shapeworld.md); with
# LONG_STAGE1=N, step 3: N more steps from step 2, the LR warm-restarted at 1e-3 (the shipped model: 3000).
set -euo pipefail
source "$(dirname "$0")/common.sh"
run_tiny_stage data/configs/shapeworld_stage1.yaml "$WORK/init" stage1_step1 "$S1_STEP1_STEPS" "$(scaled 100)" 1e-3
run_tiny_stage data/configs/shapeworld_stage1.yaml "$(last_folder stage1_step1 "$S1_STEP1_STEPS")" stage1_step2 "$S1_STEP2_STEPS" \
  "$(scaled 20)" 3e-4
if [ "$S1_STEP3_STEPS" -gt 0 ]; then
  run_tiny_stage data/configs/shapeworld_stage1.yaml "$(last_folder stage1_step2 "$S1_STEP2_STEPS")" stage1_step3 \
    "$S1_STEP3_STEPS" "$(scaled 100)" 1e-3
fi
