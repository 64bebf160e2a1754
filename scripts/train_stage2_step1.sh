#!/usr/bin/env bash
# Scone Stage II, Step 1 — distinction + understanding bridge (paper: 1k steps, ~5 h).
# Starts from Stage I Step 2's folder 0002000. Generation expert and its bridges (vae2llm, llm2vae)
# frozen; understanding expert, token embeddings, connector and timestep embedder train; the semantic
# mask (understanding bridge) is on. ViT frozen.
#
# Deviations from upstream:
# * Data: data/configs/scone_stage2.yaml pairs refined [22] + multi-candidate [36] files. Upstream's YAML
#   had num_used_data [58] for two datasets, and zip() silently dropped the multi-candidate data.
# * Warmup 100 instead of 2000: with 2000 the LR of this 1000-step stage would only ramp to 1e-5.
#   Set WARMUP_STEPS=2000 to reproduce upstream.
# Note: time_embedder stays trainable (no flag freezes it), as upstream.
set -euo pipefail

NUM_NODES=${NUM_NODES:-1}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
DATA_ROOT=${DATA_ROOT:-./datasets}
MODEL_PATH=${MODEL_PATH:-./ckpts/Scone_stage1_step2/0002000}
EXP_NAME=${EXP_NAME:-Scone_stage2_step1}
TOTAL_STEPS=${TOTAL_STEPS:-1001}           # -> folder 0001000, which Stage II Step 2 loads
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
  --freeze_llm_und False --freeze_llm_gen True --freeze_mlp_und False --freeze_mlp_gen True \
  --use_semantic_mask True \
  --text_cond_dropout_prob 0.1 --vae_cond_dropout_prob 0.0 --vit_cond_dropout_prob 0.0 \
  $EXTRA_ARGS
