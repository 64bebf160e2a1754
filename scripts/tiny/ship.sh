#!/usr/bin/env bash
# 5. Export the final Stage II model (semantic mask on) as the shipped ckpts/scone-tiny (fp16, ~10 MB).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SRC=${SRC:-$(last_folder stage2_step2_mask "$S2_STEP2_STEPS")}
OUT=${OUT:-./ckpts/scone-tiny}
$PYTHON -m train.export_model --src "$SRC" --out "$OUT" --dtype fp16
