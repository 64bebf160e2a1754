#!/usr/bin/env bash
# Shared settings of the tiny ShapeWorld recipe (scripts/tiny/*.sh source this file).
# Everything runs on the CPU in float32. Work goes to $WORK (git-ignored); the world data to $DATA_ROOT.
#   WORK=./ckpts/tiny-work   DATA_ROOT=$WORK/data   NPROC=1 (>1: torchrun with the gloo backend)
#   STEP_SCALE=1.0  multiplies every stage's step count (the CI smoke run uses a tiny value)
#   LONG_STAGE1=0   > 0: Stage I step 3 of that many steps (the shipped model: 3000)
#   LONG_STAGE2=""  "N1 N2 ...": Stage II steps 3, 4, ... of N1, N2, ... steps (the shipped model: "2500 3000 3000 3000 3000")
#   DECODER_STEPS=0 > 0: the VAE's decoder fine-tuned for that many steps, encoder frozen (shipped: 1500)
#   DEVICE=cpu DTYPE=fp32  (DEVICE=cuda DTYPE=bf16 trains on a GPU; NPROC>1 then uses nccl)
WORK=${WORK:-./ckpts/tiny-work}
DATA_ROOT=${DATA_ROOT:-$WORK/data}
NPROC=${NPROC:-1}
STEP_SCALE=${STEP_SCALE:-1.0}
TOKENS=${TOKENS:-3072}            # tokens per packed step (~12 ShapeWorld samples)
PYTHON=${PYTHON:-python}
EXTRA_ARGS=${EXTRA_ARGS:-}
DEVICE=${DEVICE:-cpu}
DTYPE=${DTYPE:-fp32}

# scaled N -> max(2, round(N * STEP_SCALE))
scaled() { $PYTHON -c "import sys; print(max(2, round(int(sys.argv[1]) * float(sys.argv[2]))))" "$1" "$STEP_SCALE"; }
# Steps per stage (defined once; every script finds a stage's final folder from these).
S1_STEP1_STEPS=$(scaled 2000)
S1_STEP2_STEPS=$(scaled 400)
S2_STEP1_STEPS=$(scaled 500)
S2_STEP2_STEPS=$(scaled 700)
# LONG_STAGE1=N (> 0) adds Stage I step 3: N more steps, LR warm-restarted at 1e-3 (cosine to 1e-4), and
# Stage II starts from it. The shipped ckpts/scone-tiny is LONG_STAGE1=3000 (+50 min on 2 cores); the
# default 0 keeps the ~2 h recipe.
LONG_STAGE1=${LONG_STAGE1:-0}
S1_STEP3_STEPS=0
if [ "$LONG_STAGE1" -gt 0 ]; then S1_STEP3_STEPS=$(scaled "$LONG_STAGE1"); fi

# LONG_STAGE2="N1 N2 ..." adds Stage II steps 3, 4, ...: N1, N2, ... more steps, everything trained, mask
# off, each with the LR warm-restarted at 1e-3 (cosine to 1e-4). The shipped model's value (header) adds
# about 160 min per variant.
LONG_STAGE2=${LONG_STAGE2:-}
S2_LONG_STEPS=()
for n in $LONG_STAGE2; do S2_LONG_STEPS+=("$(scaled "$n")"); done
# DECODER_STEPS=N (> 0): VAE phase 3 in train_vae.sh, the decoder alone (the shipped model: 1500)
DECODER_STEPS=${DECODER_STEPS:-0}
# UNDERSTAND_STEPS: the understanding stage (understand.sh), questions + think plans + generation;
# VQA_ONLY_STEPS and REALIGN_STEPS (both > 0) add its second and third steps
U_STEPS=$(scaled "${UNDERSTAND_STEPS:-3000}")
VQA_ONLY_STEPS=${VQA_ONLY_STEPS:-0}
REALIGN_STEPS=${REALIGN_STEPS:-0}
# the understanding stage's final model: its third step when it ran, else its first
understand_final() {
  if [ "$REALIGN_STEPS" -gt 0 ]; then last_folder stage_u_realign "$(scaled "$REALIGN_STEPS")"
  else last_folder stage_u "$U_STEPS"; fi
}

# step folder written last by a stage of TOTAL steps (index of the last step, zero padded)
last_folder() { printf "%s/%s/%07d" "$WORK" "$1" $(($2 - 1)); }
# the Stage I model Stage II starts from (step 3 when LONG_STAGE1 > 0, else step 2)
stage1_final() {
  if [ "$S1_STEP3_STEPS" -gt 0 ]; then last_folder stage1_step3 "$S1_STEP3_STEPS"
  else last_folder stage1_step2 "$S1_STEP2_STEPS"; fi
}
# the final Stage II model of variant TAG (mask / nomask): the last LONG_STAGE2 step, else step 2
stage2_final() {
  local n=${#S2_LONG_STEPS[@]}
  if [ "$n" -gt 0 ]; then last_folder "stage2_step$((n + 2))_$1" "${S2_LONG_STEPS[$((n - 1))]}"
  else last_folder "stage2_step2_$1" "$S2_STEP2_STEPS"; fi
}

# run_tiny_stage DATA_YAML FROM_FOLDER EXP_NAME TOTAL_STEPS WARMUP LR [stage flags...]
# Like scripts/train_common.sh, but from-scratch sized: a higher, cosine-decayed LR, the ViT trained
# (the tiny SigLIP starts random, unlike the 7B one), no activation checkpointing (it only costs time on
# a CPU), and small packs. The frozen VAE's posteriors are cached in memory and in $WORK (shared by all
# stages): the encoder is half of a CPU step, and every world image recurs (0.87 vs 2.0 s per step).
run_tiny_stage() {
  local data_yaml=$1 from=$2 exp=$3 total=$4 warmup=$5 lr=$6
  shift 6
  local launch=("$PYTHON" -m train.pretrain)
  if [ "$NPROC" -gt 1 ]; then launch=(torchrun --standalone --nproc_per_node "$NPROC" -m train.pretrain); fi
  # shellcheck disable=SC2086
  "${launch[@]}" \
    --dataset_config_file "$data_yaml" --data_root "$DATA_ROOT" \
    --model_path "$from" --resume_from "$from" --resume_model_only True --auto_resume True \
    --results_dir "$WORK/results/$exp" --checkpoint_dir "$WORK/$exp" \
    --device "$DEVICE" --dtype "$DTYPE" --sharding_strategy FULL_SHARD --activation_checkpointing False \
    --max_latent_size 16 --lr "$lr" --min_lr "$($PYTHON -c "print($lr / 10)")" --lr_scheduler cosine \
    --warmup_steps "$warmup" --total_steps "$total" --save_every 200 --log_every 10 \
    --num_workers 1 --expected_num_tokens "$TOKENS" --max_num_tokens "$TOKENS" \
    --max_num_tokens_per_sample "$TOKENS" --prefer_buffer_before 1024 \
    --freeze_vit False --visual_und True --freeze_und False \
    --text_cond_dropout_prob 0.1 --vae_cond_dropout_prob 0.0 --vit_cond_dropout_prob 0.0 \
    --vae_cache_gb 3 --vae_cache_file "$WORK/vae_posteriors.safetensors" \
    "$@" $EXTRA_ARGS
}
