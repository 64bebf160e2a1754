#!/usr/bin/env bash
# The whole tiny recipe, then the README's ShapeWorld table (about 2 h on 2 CPU cores at STEP_SCALE=1;
# the shipped model's recipe, LONG_STAGE1=3000 LONG_STAGE2="2500 3000 3000 3000 3000" DECODER_STEPS=1500,
# adds about 6 h 25 min with the ablation, 3 h 45 min with ABLATION=0):
#   data -> VAE + init -> Stage I -> Stage II with and without the semantic mask -> scores -> export.
#   STEP_SCALE=0.01 WORK=/tmp/tiny scripts/tiny/run_all.sh     # a smoke run of a few steps per stage
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/common.sh"
EVAL_ARGS=${EVAL_ARGS:-}          # e.g. "--limit 60" for a quick look
SHIP=${SHIP:-1}
ABLATION=${ABLATION:-1}           # 0: skip the Stage II run without the semantic mask
UNDERSTAND=${UNDERSTAND:-0}       # 1: the understanding stage (understand.sh) after Stage II, and ship it
EVALS=${EVALS:-untrained stage1 stage2_step1_mask stage2_step1_nomask stage2_mask stage2_nomask}
bash "$HERE/make_data.sh"
bash "$HERE/train_vae.sh"
bash "$HERE/stage1.sh"
SEMANTIC_MASK=True bash "$HERE/stage2.sh"
if [ "$ABLATION" = 1 ]; then SEMANTIC_MASK=False bash "$HERE/stage2.sh"; fi
if [ "$UNDERSTAND" = 1 ]; then FROM="$(stage2_final mask)" bash "$HERE/understand.sh"; fi
declare -A FOLDER=(
  [untrained]="$WORK/init"
  [stage1]="$(stage1_final)"
  [stage2_step1_mask]="$(last_folder stage2_step1_mask "$S2_STEP1_STEPS")"
  [stage2_step1_nomask]="$(last_folder stage2_step1_nomask "$S2_STEP1_STEPS")"
  [stage2_mask]="$(stage2_final mask)"
  [stage2_nomask]="$(stage2_final nomask)"
)
for name in $EVALS; do
  # a judged failure makes eval.sh exit 1 after writing the table: report it, keep going
  # shellcheck disable=SC2086
  bash "$HERE/eval.sh" "${FOLDER[$name]}" "$WORK/eval/$name" $EVAL_ARGS || echo "eval $name: exit $?" >&2
done
if [ "$SHIP" = 1 ]; then UNDERSTAND=$UNDERSTAND bash "$HERE/ship.sh"; fi
