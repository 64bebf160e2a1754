#!/usr/bin/env bash
# 2. The world's autoencoder (FLUX architecture, 1 M parameters), then the random-init model folder.
# Phase 1 trains on random 48 px crops (4x cheaper steps), phase 2 on whole 96 px images (it removes the
# border artefacts of crop training and fixes the colours); about 30 min on 2 cores at STEP_SCALE=1.
set -euo pipefail
source "$(dirname "$0")/common.sh"
$PYTHON -m train.autoencoder_train --out "$WORK/ae/phase1.safetensors" --steps "$(scaled 1000)" --device "$DEVICE" \
  --crop 48 --batch_size 16 --lr 1e-3
$PYTHON -m train.autoencoder_train --init "$WORK/ae/phase1.safetensors" --out "$WORK/ae/ae.safetensors" \
  --steps "$(scaled 800)" --device "$DEVICE" --crop 0 --batch_size 8 --lr 1e-3
$PYTHON -m train.tiny_model --out "$WORK/init" --ae "$WORK/ae/ae.safetensors" \
  --num_instructions "${NUM_INSTRUCTIONS:-20000}"
