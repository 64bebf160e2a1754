#!/usr/bin/env bash
# 4. Stage II (distinction) on single- + multi-candidate world data. Step 1: generation expert and its
# bridges frozen, understanding expert trained, semantic mask on (SEMANTIC_MASK=False: the ablation).
# Step 2: everything trained, mask off, as in scripts/train_stage2_step*.sh. With LONG_STAGE2="N1 N2 ...",
# steps 3, 4, ...: step 2 continued for N1, N2, ... steps, each with the LR warm-restarted at 1e-3.
# STAGE2_DATA: the data YAML (data/configs/shapeworld_stage2_vlm.yaml adds the world's captions; an
# experiment, docs/shapeworld.md §4: run it with TAG=vlm_mask so it does not overwrite the recipe's folders).
set -euo pipefail
source "$(dirname "$0")/common.sh"
SEMANTIC_MASK=${SEMANTIC_MASK:-True}
STAGE2_DATA=${STAGE2_DATA:-data/configs/shapeworld_stage2.yaml}
TAG=${TAG:-$([ "$SEMANTIC_MASK" = True ] && echo mask || echo nomask)}
S1_FINAL=$(stage1_final)
A=$S2_STEP1_STEPS; B=$S2_STEP2_STEPS
run_tiny_stage "$STAGE2_DATA" "$S1_FINAL" "stage2_step1_$TAG" "$A" "$(scaled 20)" 3e-4 \
  --freeze_llm_und False --freeze_llm_gen True --freeze_mlp_und False --freeze_mlp_gen True \
  --use_semantic_mask "$SEMANTIC_MASK"
# step 2 and every LONG_STAGE2 step train everything
ALL_TRAINED=(--freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False)
run_tiny_stage "$STAGE2_DATA" "$(last_folder "stage2_step1_$TAG" "$A")" \
  "stage2_step2_$TAG" "$B" "$(scaled 20)" 3e-4 "${ALL_TRAINED[@]}"
PREV=$(last_folder "stage2_step2_$TAG" "$B"); K=3
for N in "${S2_LONG_STEPS[@]}"; do
  run_tiny_stage "$STAGE2_DATA" "$PREV" "stage2_step${K}_$TAG" "$N" "$(scaled 100)" 1e-3 "${ALL_TRAINED[@]}"
  PREV=$(last_folder "stage2_step${K}_$TAG" "$N"); K=$((K + 1))
done
