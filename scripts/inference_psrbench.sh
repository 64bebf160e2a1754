#!/usr/bin/env bash
# Generate PSRBench images with Scone's published settings (1024x1024, 50 steps, cfg 4.0 / 2.0).
#   DATA_ROOT=./datasets/PSRBench OUTPUT_DIR=./results/psrbench/Scone NGPU=4 bash scripts/inference_psrbench.sh
# Writes {OUTPUT_DIR}/round{i}/{subset}/{id}.png and {OUTPUT_DIR}/round{i}/{subset}.json (the subset's
# records + result_path, the file the evaluator reads). Per-image seeds derive from (SEED, subset, id,
# round); rerunning resumes (existing readable images are kept). Extra arguments go to the runner,
# e.g. --task_types Position Three  or  --limit 4.
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./ckpts/Scone}
DATA_ROOT=${DATA_ROOT:-./datasets/PSRBench}
OUTPUT_DIR=${OUTPUT_DIR:-./results/psrbench/Scone}
NGPU=${NGPU:-1}
torchrun --standalone --nproc_per_node "$NGPU" -m eval.generate \
    --benchmark psrbench \
    --model_path "$MODEL_PATH" \
    --data_root "$DATA_ROOT" \
    --output_dir "$OUTPUT_DIR" \
    --rounds "${ROUNDS:-1}" \
    --seed "${SEED:-1234}" "$@"
