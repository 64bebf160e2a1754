"""Qwen2 tokenizer with the special tokens BAGEL/Scone rely on (docs/architecture.md)."""

from __future__ import annotations

import os
from dataclasses import dataclass

SPECIAL_TOKENS = {
    "bos_token_id": "<|im_start|>",
    "eos_token_id": "<|im_end|>",
    "start_of_image": "<|vision_start|>",
    "end_of_image": "<|vision_end|>",
}
TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer_config.json")


@dataclass(frozen=True)
class SpecialTokenIds:
    bos_token_id: int
    eos_token_id: int
    start_of_image: int
    end_of_image: int

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def load_tokenizer(path: str):
    """Load the Qwen2 BPE tokenizer from a released folder and add the four special tokens if absent.

    Returns ``(tokenizer, SpecialTokenIds, num_new_tokens)``. With the Qwen2.5 tokenizer nothing is
    added (all four exist); the count is returned so training can resize embeddings like upstream.
    """
    from transformers import AutoTokenizer, Qwen2Tokenizer

    missing = [f for f in TOKENIZER_FILES if not os.path.exists(os.path.join(path, f))]
    if missing and not os.path.exists(os.path.join(path, "tokenizer.json")):
        raise FileNotFoundError(f"tokenizer files missing in {path}: {', '.join(missing)}")
    try:
        tok = Qwen2Tokenizer.from_pretrained(path)
    except Exception:  # pragma: no cover - tokenizer.json-only folders
        tok = AutoTokenizer.from_pretrained(path)
    existing = set(tok.get_vocab().keys())
    to_add = [t for t in SPECIAL_TOKENS.values() if t not in existing]
    num_new = tok.add_tokens(to_add) if to_add else 0
    ids = SpecialTokenIds(**{k: tok.convert_tokens_to_ids(v) for k, v in SPECIAL_TOKENS.items()})
    return tok, ids, num_new


def encode(tokenizer, text: str) -> list[int]:
    """Plain BPE ids, no special tokens added (upstream uses ``tokenizer.encode``)."""
    return list(tokenizer.encode(text, add_special_tokens=False))
