#!/usr/bin/env bash
# Scone Stage I, Step 2 — composition on the refined single-candidate data (paper: 1 epoch, ~15 h).
# Starts from Stage I Step 1's folder 0006000 (a complete released-layout folder: our step folders carry
# llm_config.json, vit_config.json, ae.safetensors and the tokenizer; upstream's did not).
# Trains the same parameters as Step 1.
#
# Deviation from upstream: warmup 200 instead of the default 2000. Every stage restarts the scheduler
# (--resume_model_only), and with 2000 warmup steps this 2000-step stage would end exactly when the LR
# first reaches 2e-5. Set WARMUP_STEPS=2000 to reproduce upstream.
set -euo pipefail

NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_ROOT=${DATA_ROOT:-./datasets}
MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage1_step1/0006000}
EXP_NAME=${EXP_NAME:-Scone_stage1_step2}
TOTAL_STEPS=${TOTAL_STEPS:-2001}           # -> folder 0002000, which Stage II Step 1 loads
WARMUP_STEPS=${WARMUP_STEPS:-200}
EXTRA_ARGS=${EXTRA_ARGS:-}

torchrun --nnodes "$NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train/pretrain.py \
  --dataset_config_file data/configs/scone_stage1_step2.yaml --data_root "$DATA_ROOT" \
  --model_path "$MODEL_PATH" --resume_from "$MODEL_PATH" --finetune_from_ema False --resume_model_only True \
  --finetune_from_hf True --auto_resume True \
  --layer_module Qwen2MoTDecoderLayer --max_latent_size 64 \
  --results_dir "./results/$EXP_NAME" --checkpoint_dir "./ckpts/$EXP_NAME" \
  --lr 2e-5 --warmup_steps "$WARMUP_STEPS" --total_steps "$TOTAL_STEPS" --save_every 1000 --log_every 1 \
  --num_workers 3 --sharding_strategy HYBRID_SHARD --num_replicate "$NUM_NODES" --num_shard "$GPUS_PER_NODE" \
  --cpu_offload False \
  --expected_num_tokens 26496 --max_num_tokens 26496 --max_num_tokens_per_sample 26496 \
  --visual_und True --freeze_und False --freeze_vit True --freeze_llm False \
  --freeze_llm_und False --freeze_llm_gen False --freeze_mlp_und False --freeze_mlp_gen False \
  --text_cond_dropout_prob 0.1 --vae_cond_dropout_prob 0.0 --vit_cond_dropout_prob 0.0 \
  $EXTRA_ARGS
