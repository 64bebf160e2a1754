#!/usr/bin/env bash
# 7. Export the final model as the shipped ckpts/scone-tiny (fp16, ~10 MB): the final Stage II model
# (semantic mask on), or with UNDERSTAND=1 the understanding stage's final model (trained to answer, so
# generation_only is dropped from its scone_config.json). SRC=folder overrides the choice.
set -euo pipefail
source "$(dirname "$0")/common.sh"
UNDERSTAND=${UNDERSTAND:-0}
OUT=${OUT:-./ckpts/scone-tiny}
if [ "$UNDERSTAND" = 1 ]; then
  SRC=${SRC:-$(understand_final)}
  $PYTHON -m train.export_model --src "$SRC" --out "$OUT" --dtype fp16 --answers
else
  SRC=${SRC:-$(stage2_final mask)}
  $PYTHON -m train.export_model --src "$SRC" --out "$OUT" --dtype fp16
fi
