#!/usr/bin/env bash
# 8. The bridge ablation with power: Stage II step 1 (understanding expert trained, generation expert frozen)
# with and without the semantic mask, from FROM (default: the understanding stage's final model), for each
# training seed of SEEDS (default "0 1 2": the seed moves the data order, the noise and the CFG dropout),
# each scored on the first EVAL_CASES held-out cases over two sampling rounds; then the table with the 95%
# confidence interval of the mask's effect (scripts/tiny/ablation_table.py) and the bridge probe of FROM.
#   bash scripts/tiny/ablation.sh          # 35 min on 2 cores: 6 x 4-6 min of training + 6 x 1 min of scoring
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/common.sh"
FROM=${FROM:-$(understand_final)}
SEEDS=${SEEDS:-0 1 2}
EVAL_ARGS=${EVAL_ARGS:-}
RUNS=()
for seed in $SEEDS; do
  for mask in True False; do
    tag="ablation_$([ "$mask" = True ] && echo mask || echo nomask)_s$seed"
    run_tiny_stage data/configs/shapeworld_stage2.yaml "$FROM" "$tag" "$S2_STEP1_STEPS" "$(scaled 20)" 3e-4 \
      --freeze_llm_und False --freeze_llm_gen True --freeze_mlp_und False --freeze_mlp_gen True \
      --use_semantic_mask "$mask" --global_seed $((4396 + seed)) --data_seed $((42 + seed))
    # shellcheck disable=SC2086
    bash "$HERE/eval.sh" "$(last_folder "$tag" "$S2_STEP1_STEPS")" "$WORK/eval/$tag" --rounds 2 $EVAL_ARGS \
      || echo "eval $tag: exit $?" >&2
    RUNS+=("$WORK/eval/$tag")
  done
done
$PYTHON -m eval.bridge_probe --model_path "$FROM" --bench_dir "$DATA_ROOT/shapeworld/bench" \
  --out "$WORK/eval/ablation_probe"
$PYTHON "$HERE/ablation_table.py" --work "$WORK" --seeds $SEEDS | tee "$WORK/eval/ablation.md"
