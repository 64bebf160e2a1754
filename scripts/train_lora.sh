#!/usr/bin/env bash
# Fine-tune Scone on your own reference/target pairs with LoRA (docs/finetune.md).
#   python scripts/make_s2i_parquet.py --images my_photos --jsonl my_pairs.jsonl --out datasets/mine \
#       --model_path ckpts/Scone
#   DATA_YAML=datasets/mine/my_s2i.yaml DATA_ROOT=datasets/mine bash scripts/train_lora.sh
# Settings come from the environment: MODEL_PATH, EXP_NAME, GPUS, LORA_RANK, LORA_ALPHA, TOTAL_STEPS, LR,
# TOKENS, SAVE_EVERY, WARMUP_STEPS, NUM_WORKERS (docs/finetune.md has a CPU recipe on ckpts/scone-tiny).
# Each step folder of ckpts/$EXP_NAME holds only the adapter (PEFT format, a few MB):
#   python -m inference.single_case --model_path "$MODEL_PATH" --lora ckpts/$EXP_NAME/0000999 ...
# A rerun resumes from the newest step folder. Extra flags are passed on (e.g. --lora_targets gen:attn).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"

MODEL_PATH=${MODEL_PATH:-./ckpts/Scone}
DATA_YAML=${DATA_YAML:?set DATA_YAML to the mix written by scripts/make_s2i_parquet.py}
DATA_ROOT=${DATA_ROOT:?set DATA_ROOT to the --out folder of that script}
EXP_NAME=${EXP_NAME:-scone_lora}
GPUS=${GPUS:-1}
LORA_RANK=${LORA_RANK:-16}
LORA_ALPHA=${LORA_ALPHA:-16}
TOTAL_STEPS=${TOTAL_STEPS:-1000}
LR=${LR:-1e-4}
TOKENS=${TOKENS:-16384}                  # tokens per packed batch and GPU
SAVE_EVERY=${SAVE_EVERY:-250}
WARMUP_STEPS=${WARMUP_STEPS:-50}
NUM_WORKERS=${NUM_WORKERS:-2}            # DataLoader workers per GPU; GPUS x NUM_WORKERS <= the data's row groups

torchrun --standalone --nproc_per_node "$GPUS" "$ROOT/train/pretrain.py" \
  --model_path "$MODEL_PATH" --dataset_config_file "$DATA_YAML" --data_root "$DATA_ROOT" \
  --lora_rank "$LORA_RANK" --lora_alpha "$LORA_ALPHA" \
  --results_dir "./results/$EXP_NAME" --checkpoint_dir "./ckpts/$EXP_NAME" --auto_resume True \
  --lr "$LR" --warmup_steps "$WARMUP_STEPS" --total_steps "$TOTAL_STEPS" --save_every "$SAVE_EVERY" --log_every 10 \
  --activation_checkpointing True --num_workers "$NUM_WORKERS" \
  --expected_num_tokens "$TOKENS" --max_num_tokens "$TOKENS" --max_num_tokens_per_sample "$TOKENS" \
  "$@"
