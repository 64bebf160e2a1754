#!/usr/bin/env bash
# Scone Stage II, Step 2 — distinction (paper: 1k steps, ~5 h). Starts from Stage II Step 1's 0001000.
#
# Deviations from upstream:
# * Freezing follows the paper/README ("Und., Gen." both trained): no expert or bridge is frozen (ViT
#   stays frozen). Upstream's script passed --freeze_llm_und/--freeze_llm_gen/--freeze_mlp_und/
#   --freeze_mlp_gen True, which trains only embed_tokens and the timestep embedder. To reproduce
#   that, run with EXTRA_ARGS="--freeze_llm_und True --freeze_llm_gen True --freeze_mlp_und True --freeze_mlp_gen True".
# * Data: refined + multi-candidate (see train_stage2_step1.sh).
# * Warmup 100 instead of 2000 (see train_stage2_step1.sh).
set -euo pipefail

NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_ROOT=${DATA_ROOT:-./datasets}
MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage2_step1/0001000}
EXP_NAME=${EXP_NAME:-Scone_stage2_step2}
TOTAL_STEPS=${TOTAL_STEPS:-1001}           # -> folder 0001000 = the final Scone model folder
WARMUP_STEPS=${WARMUP_STEPS:-100}
EXTRA_ARGS=${EXTRA_ARGS:-}

torchrun --nnodes "$NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train/pretrain.py \
  --dataset_config_file data/configs/scone_stage2.yaml --data_root "$DATA_ROOT" \
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
