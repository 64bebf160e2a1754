#!/usr/bin/env bash
# Shared launcher of the four Scone training stages; sourced by scripts/train_stage*.sh, which set the
# stage-specific MODEL_PATH, EXP_NAME, TOTAL_STEPS, WARMUP_STEPS and pass their data YAML and flags.
# Cluster settings come from the environment (defaults: one node with 8 GPUs).
NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_ROOT=${DATA_ROOT:-./datasets}          # holds Scone-S2I-57K/ (see docs/data.md)
EXTRA_ARGS=${EXTRA_ARGS:-}                 # e.g. "--wandb_project scone --wandb_name $EXP_NAME"

# run_scone_stage DATA_YAML FINETUNE_FROM_EMA [stage flags...]
# Settings common to all stages are the ones every upstream Scone script passes (docs/training.md).
run_scone_stage() {
  local data_yaml=$1 from_ema=$2
  shift 2
  # shellcheck disable=SC2086
  torchrun --nnodes "$NUM_NODES" --nproc_per_node "$GPUS_PER_NODE" --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" \
    train/pretrain.py \
    --dataset_config_file "$data_yaml" --data_root "$DATA_ROOT" \
    --model_path "$MODEL_PATH" --resume_from "$MODEL_PATH" --finetune_from_ema "$from_ema" --resume_model_only True \
    --finetune_from_hf True --auto_resume True \
    --layer_module Qwen2MoTDecoderLayer --max_latent_size 64 \
    --results_dir "./results/$EXP_NAME" --checkpoint_dir "./ckpts/$EXP_NAME" \
    --lr 2e-5 --warmup_steps "$WARMUP_STEPS" --total_steps "$TOTAL_STEPS" --save_every 1000 --log_every 1 \
    --num_workers 3 --sharding_strategy HYBRID_SHARD --num_replicate "$NUM_NODES" --num_shard "$GPUS_PER_NODE" \
    --cpu_offload False \
    --expected_num_tokens 26496 --max_num_tokens 26496 --max_num_tokens_per_sample 26496 \
    --visual_und True --freeze_und False --freeze_vit True --freeze_llm False \
    --text_cond_dropout_prob 0.1 --vae_cond_dropout_prob 0.0 --vit_cond_dropout_prob 0.0 \
    "$@" $EXTRA_ARGS
}
