#!/usr/bin/env bash
# One image from reference images and an instruction (python -m inference.single_case).
# Variables (all optional):
#   MODEL_PATH    model folder or hub id (default: as the Python CLI: ckpts/Scone if downloaded, else the
#                 shipped tiny ShapeWorld model ckpts/scone-tiny)
#   INSTRUCTION   the instruction (default: the README quick start's, for the example references)
#   INPUT_IMAGES  reference images, space-separated, in order (default: assets/examples/ref1.png ref2.png)
#   SEED          sampling seed (default 1234)
# Size, steps and CFG are the model's defaults (scone_config.json, else Scone's published 1024x1024,
# 50 timesteps, CFG 4.0 / 2.0); extra arguments go to the CLI, e.g. --num_timesteps 30 --output out.png.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # runnable from any folder
MODEL_ARGS=()
if [ -n "${MODEL_PATH:-}" ]; then MODEL_ARGS=(--model_path "$MODEL_PATH"); fi
# shellcheck disable=SC2086  # INPUT_IMAGES is a space-separated list
python -m inference.single_case ${MODEL_ARGS[@]+"${MODEL_ARGS[@]}"} \
    --instruction "${INSTRUCTION:-Place the green cross from image 1 on the right, on the gray background from image 2.}" \
    --input_image_paths ${INPUT_IMAGES:-$ROOT/assets/examples/ref1.png $ROOT/assets/examples/ref2.png} \
    --seed "${SEED:-1234}" "$@"
