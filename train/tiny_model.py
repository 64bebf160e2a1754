"""Write a randomly initialised *tiny* BAGEL/Scone model folder in the released layout (ShapeWorld recipe).

The folder holds exactly what a released checkpoint holds — ``llm_config.json``, ``vit_config.json``,
``ae.safetensors``, ``model.safetensors`` and the Qwen2 tokenizer files — plus ``scone_config.json``, the
optional file in which a model states its understanding-bridge layers and its inference defaults
(``modeling/config.py``). Every loader, trainer and the pipeline then treat it like the 7B model.

The tokenizer is a byte-level BPE trained on the world's instructions, so a word is about one token (a
generic 320-token BPE would spend ~4 tokens per word), with the Qwen2 special tokens appended after the
BPE vocabulary as in Qwen2.5.

    python -m train.tiny_model --out ckpts/tiny-work/init --ae ckpts/tiny-work/ae/ae.safetensors
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import tempfile

import torch

from data.synthetic.shapeworld import TASK_TYPES, sample_case
from modeling.checkpoint import load_pretrained
from modeling.config import SCONE_CONFIG_FILE
from modeling.files import save_safetensors

logger = logging.getLogger(__name__)

# Qwen2.5's added tokens, in Qwen2.5's order (they follow the BPE vocabulary).
QWEN2_SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# The tiny geometry. Hidden sizes are small but the structure is the 7B one: a Qwen2 MoT decoder with an
# understanding and a generation expert, a SigLIP NaViT (file layer count N, N-1 built), a FLUX-class VAE.
TINY_LLM = {
    "hidden_size": 128,
    "intermediate_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "rope_theta": 10000.0,
}
TINY_VIT = {"hidden_size": 96, "intermediate_size": 192, "num_hidden_layers": 3, "num_attention_heads": 4}
# Bridge in miniature: upstream reads similarities after layer 8 of 28 and masks layers 9-16 (the lower
# middle of the stack); six layers keep the same shape: similarity after layer 1, mask on layers 2-3.
TINY_SCONE = {
    "semantic_layer": 1,
    "semantic_mask_layers": [2, 3],
    "semantic_threshold": 0.88,
    # the recipe trains generation only: the understanding expert never learns to answer questions
    "generation_only": True,
    "inference": {
        "vae_transform": [96, 32, 16],
        "vit_transform": [70, 28, 14],
        "height": 96,
        "width": 96,
        "num_timesteps": 25,
        "timestep_shift": 1.0,
        "cfg_text_scale": 2.0,
        "cfg_img_scale": 1.0,
        "cfg_interval": [0.0, 1.0],
        "cfg_renorm_type": "global",
        "cfg_renorm_min": 0.0,
    },
}
MAX_LATENT_SIZE = 16  # 256 px at 16 px per latent token


def world_instructions(n: int, seed: int) -> list[str]:
    """``n`` instructions from a seed stream of their own (the tokenizer never sees the benchmark's)."""
    rng = random.Random(f"tokenizer-{seed}")
    return [sample_case(rng, TASK_TYPES[i % len(TASK_TYPES)]).instruction for i in range(n)]


def write_tokenizer(out: str, corpus: list[str], vocab_size: int) -> int:
    """Train a byte-level BPE on ``corpus`` and write Qwen2-style tokenizer files; returns its length."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=vocab_size, min_frequency=2, show_progress=False)
    with tempfile.TemporaryDirectory() as tmp:
        bpe.save_model(tmp)
        for name in ("vocab.json", "merges.txt"):
            shutil.copy(os.path.join(tmp, name), os.path.join(out, name))
    n_bpe = bpe.get_vocab_size()
    added = {
        str(n_bpe + i): {
            "content": tok,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for i, tok in enumerate(QWEN2_SPECIAL_TOKENS)
    }
    config = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added,
        "additional_special_tokens": list(QWEN2_SPECIAL_TOKENS[1:]),
        "bos_token": None,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 4096,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump(config, f, indent=2)
    return n_bpe + len(QWEN2_SPECIAL_TOKENS)


def write_configs(out: str, vocab_size: int) -> None:
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_act": "silu",
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "vocab_size": vocab_size,
        **TINY_LLM,
    }
    vit = {"model_type": "siglip_vision_model", "patch_size": 14, "image_size": 980, **TINY_VIT}
    for name, cfg in (("llm_config.json", llm), ("vit_config.json", vit), (SCONE_CONFIG_FILE, TINY_SCONE)):
        with open(os.path.join(out, name), "w") as f:
            json.dump(cfg, f, indent=2)


def build_tiny_folder(
    out: str, ae_path: str, seed: int = 0, vocab_size: int = 512, num_instructions: int = 20000
) -> str:
    """Write the whole folder (random weights, seeded) and check it loads; returns ``out``."""
    from modeling.autoencoder import load_autoencoder
    from modeling.bagel import Bagel
    from modeling.checkpoint import build_config
    from modeling.tokenizer import load_tokenizer

    os.makedirs(out, exist_ok=True)
    shutil.copy(ae_path, os.path.join(out, "ae.safetensors"))
    n_tok = write_tokenizer(out, world_instructions(num_instructions, seed), vocab_size)
    model_vocab = -(-n_tok // 64) * 64  # padded like Qwen2's embedding table
    write_configs(out, model_vocab)
    tokenizer, _, n_new = load_tokenizer(out)
    if n_new or len(tokenizer) != n_tok:
        raise RuntimeError(
            f"tokenizer round trip failed: {len(tokenizer)} tokens, {n_new} added (want {n_tok})"
        )
    config = build_config(out)
    config.max_latent_size = MAX_LATENT_SIZE
    config.vae = load_autoencoder(os.path.join(out, "ae.safetensors")).params
    model = Bagel(config)
    model.init_weights(seed)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_safetensors(state, os.path.join(out, "model.safetensors"))
    n = sum(v.numel() for v in state.values())
    loaded = load_pretrained(out)  # the folder must load exactly like a released one
    logger.info(
        "wrote %s: %.2f M parameters, vocab %d (%d BPE + %d special), bridge %s",
        out,
        n / 1e6,
        model_vocab,
        n_tok - len(QWEN2_SPECIAL_TOKENS),
        len(QWEN2_SPECIAL_TOKENS),
        (loaded.config.semantic_layer, loaded.config.semantic_mask_layers),
    )
    return out


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", required=True, help="folder to write")
    p.add_argument("--ae", required=True, help="ae.safetensors (python -m train.autoencoder_train)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--vocab_size", type=int, default=512, help="BPE vocabulary (before special tokens)")
    p.add_argument("--num_instructions", type=int, default=20000, help="tokenizer training corpus size")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    build_tiny_folder(args.out, args.ae, args.seed, args.vocab_size, args.num_instructions)


if __name__ == "__main__":
    main()
