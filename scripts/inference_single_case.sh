#!/usr/bin/env bash
# Single-case generation with Scone's published settings (1024x1024, 50 steps, cfg 4.0 / 2.0).
set -euo pipefail
MODEL_PATH=${MODEL_PATH:-./ckpts/Scone}
python -m inference.single_case \
    --model_path "$MODEL_PATH" \
    --instruction "${INSTRUCTION:-The man from image 1 holds the object which has a blue and red top in image 2 in a coffee shop.}" \
    --input_image_paths ${INPUT_IMAGES:-./assets/examples/ref1.png ./assets/examples/ref2.png} \
    --seed "${SEED:-1234}" "$@"
