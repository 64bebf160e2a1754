#!/usr/bin/env bash
# 5. Export the final Stage II model (semantic mask on) as the shipped ckpts/scone-tiny (fp16, ~10 MB).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SRC=${SRC:-$(stage2_final mask)}
OUT=${OUT:-./ckpts/scone-tiny}
$PYTHON -m train.export_model --src "$SRC" --out "$OUT" --dtype fp16
