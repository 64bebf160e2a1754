#!/usr/bin/env bash
# Scone Stage I, Step 1 — composition on the base single-candidate data (paper: 1 epoch, ~30 h on 8 GPUs).
# Starts from BAGEL-7B-MoT's EMA weights; trains the whole LLM (und + gen experts), connector, vae2llm,
# llm2vae and the timestep embedder (ViT frozen). The step folder 0006000 is what Stage I Step 2 loads.
set -euo pipefail

NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_ROOT=${DATA_ROOT:-./datasets}          # holds Scone-S2I-57K/ (see docs/data.md)
MODEL_PATH=${MODEL_PATH:-./ckpts/BAGEL-7B-MoT}
EXP_NAME=${EXP_NAME:-Scone_stage1_step1}
TOTAL_STEPS=${TOTAL_STEPS:-6001}           # last step index 6000 -> folder 0006000 (upstream stopped there)
WARMUP_STEPS=${WARMUP_STEPS:-2000}         # upstream default; reached after a third of this stage
EXTRA_ARGS=${EXTRA_ARGS:-}                 # e.g. "--wandb_project scone --wandb_name $EXP_NAME"

torchrun --nnodes "$NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK" \
  --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
  train/pretrain.py \
  --dataset_config_file data/configs/scone_stage1_step1.yaml --data_root "$DATA_ROOT" \
  --model_path "$MODEL_PATH" --resume_from "$MODEL_PATH" --finetune_from_ema True --resume_model_only True \
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
