#!/usr/bin/env bash
# 3. Stage I (composition) on single-candidate world data: step 1 from the random init, step 2 a shorter
# continuation at a lower LR (the world has no separate "refined" set; see docs/shapeworld.md).
set -euo pipefail
source "$(dirname "$0")/common.sh"
S1=$(scaled 1400); S2=$(scaled 300)
run_tiny_stage data/configs/shapeworld_stage1.yaml "$WORK/init" stage1_step1 "$S1" "$(scaled 100)" 1e-3
run_tiny_stage data/configs/shapeworld_stage1.yaml "$(last_folder stage1_step1 "$S1")" stage1_step2 "$S2" \
  "$(scaled 20)" 3e-4
