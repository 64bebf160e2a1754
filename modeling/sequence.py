"""The packed token sequence: the one contract between data, training and inference.

Every forward of the model, whether a training pack of many samples, one prefill step of an inference
context or one denoising step, runs over a ``PackedSequence`` made by a ``SequenceBuilder``. The builder
holds the only copy of the layout rules (docs/architecture.md §1–2):

====================  ===============================================  ====================  ==========
item                  tokens                                           RoPE position         split mode
====================  ===============================================  ====================  ==========
text                  ``<|im_start|>`` ids ``<|im_end|>``              one per token         causal
ViT image             ``<|vision_start|>`` (H/14)(W/14) ``<|vision_end|>``  one shared, then +1  full
clean VAE image       ``<|vision_start|>`` (H/16)(W/16) ``<|vision_end|>``  one shared, then +1  full
noisy VAE image       same, the latent tokens are the prediction target  one shared, then +0  noise
dropped image         nothing                                          +1                    —
====================  ===============================================  ====================  ==========

Attention inside one sample (``sample_attention_mask``): each split sees every earlier token of its
sample; a causal split is lower-triangular inside itself, a full split sees all of itself; the columns of
a noise split are then hidden from every other row, so nothing, earlier or later, attends to noisy
tokens. Samples never see each other. Image tokens carry 2-D ids (row * side + col) into the position
tables of the ViT and of the latents.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from modeling.tokenizer import SpecialTokenIds

ATTN_MODES = ("causal", "full", "noise")


# ---------------------------------------------------------------------------------------- geometry
def patchify(image: torch.Tensor, patch_size: int) -> torch.Tensor:
    """[C, H, W] -> [(H/p)(W/p), p*p*C]: patches row-major, each in (patch_row, patch_col, channel) order.

    The same order serves ViT pixels (p = 14) and VAE latents (p = 2)."""
    c, h, w = image.shape
    p = patch_size
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of the patch size {p}")
    x = image.reshape(c, h // p, p, w // p, p)
    return x.permute(1, 3, 2, 4, 0).reshape((h // p) * (w // p), p * p * c)


def clean_latent_tokens(latent: torch.Tensor, grids: list[tuple[int, int]], patch: int) -> torch.Tensor:
    """latent [n, C, Hmax, Wmax] (VAE output of the zero-padded images) -> tokens [V, p*p*C] fp32.

    Each image's latent is cropped out of the padded batch to its own grid before patchifying."""
    return torch.cat(
        [patchify(latent[i, :, : h * patch, : w * patch].float(), patch) for i, (h, w) in enumerate(grids)]
    )


def unpatchify(tokens: torch.Tensor, h: int, w: int, p: int, channels: int) -> torch.Tensor:
    """tokens [h*w, p*p*C] -> [C, p*h, p*w] (inverse of ``patchify``)."""
    x = tokens.reshape(h, w, p, p, channels)
    return x.permute(4, 0, 2, 1, 3).reshape(channels, h * p, w * p)


def flattened_position_ids(h: int, w: int, max_per_side: int, interpolate: bool = False) -> torch.Tensor:
    """2-D position ids of an ``h x w`` token grid, row-major. LongTensor [h*w].

    ``interpolate=False`` (the released setting): id = row * G + col with G = ``max_per_side``, which needs
    ``h, w <= G``. ``interpolate=True``: fractional coordinates ``arange(0, 1 - 1e-6, 1/h)`` are bucketed
    against the boundaries ``arange(1/G, 1, 1/G)`` (float32, as upstream: the edges depend on rounding),
    so any grid is squeezed onto the G x G table.
    """
    if h <= 0 or w <= 0 or max_per_side <= 0:
        raise ValueError(f"grid sizes must be positive, got h={h}, w={w}, max_per_side={max_per_side}")
    if interpolate:
        boundaries = torch.arange(1 / max_per_side, 1.0, 1 / max_per_side, dtype=torch.float32)
        rows = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / h, dtype=torch.float32), boundaries, right=True)
        cols = torch.bucketize(torch.arange(0, 1 - 1e-6, 1 / w, dtype=torch.float32), boundaries, right=True)
    else:
        if h > max_per_side or w > max_per_side:
            raise ValueError(
                f"grid {h}x{w} exceeds the position table side {max_per_side} (interpolate=False "
                "cannot extrapolate past the table; resize the image or use interpolate=True)"
            )
        rows, cols = torch.arange(h), torch.arange(w)
    return (rows[:, None] * max_per_side + cols[None, :]).flatten().long()


def sample_attention_mask(
    split_lens: list[int], attn_modes: list[str], device: str | torch.device = "cpu"
) -> torch.Tensor:
    """Bool [L, L] mask of one sample (L = sum(split_lens)); ``mask[q, k]``: query q may attend to key k."""
    if len(split_lens) != len(attn_modes):
        raise ValueError(
            f"split_lens ({len(split_lens)}) and attn_modes ({len(attn_modes)}) differ in length"
        )
    for mode in attn_modes:
        if mode not in ATTN_MODES:
            raise ValueError(f"unknown attention mode {mode!r}; expected one of {ATTN_MODES}")
    total = int(sum(split_lens))
    mask = torch.zeros((total, total), dtype=torch.bool, device=device)
    start = 0
    for length, mode in zip(split_lens, attn_modes):
        end = start + length
        mask[start:end, :start] = True
        block = torch.ones((length, length), dtype=torch.bool, device=device)
        mask[start:end, start:end] = block.tril() if mode == "causal" else block
        start = end
    # A second pass, so that later splits, which saw noisy tokens as "earlier", lose them again.
    start = 0
    for length, mode in zip(split_lens, attn_modes):
        end = start + length
        if mode == "noise":
            mask[:, start:end] = False
            mask[start:end, start:end] = True
        start = end
    return mask


def to_additive_mask(mask: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Bool mask -> additive float mask (0 where allowed, -inf where blocked), as SDPA expects."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill_(~mask, float("-inf"))


@dataclass(frozen=True)
class SequenceGeometry:
    """Patch sizes and position-table sides (from ``BagelConfig.sequence_geometry()``)."""

    vit_patch_size: int = 14
    vit_max_patch_per_side: int = 70
    latent_downsample: int = 16  # pixels per latent token: VAE downsample x latent patch size
    max_latent_size: int = 64
    interpolate_pos: bool = False


# ---------------------------------------------------------------------------------------- sequence
def _long(values) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.long)


@dataclass
class PackedSequence:
    """One packed sequence of N tokens (one or more samples). Index tensors are positions in [0, N).

    Text: ``text_ids`` [T] at ``text_indexes`` [T] (bos/eos and image markers included);
    ``instruction_indexes`` [I] the text tokens the bridge compares images with.
    ViT: ``vit_pixels`` [P, 14*14*3] (patchified, [-1, 1]) at ``vit_indexes`` [P], 2-D ids
    ``vit_position_ids`` [P], one (h, w) grid per image in ``vit_grids``.
    VAE: ``vae_images`` [n, 3, Hmax, Wmax] zero-padded pixels (data pipeline only), latent slots at
    ``vae_indexes`` [V] with 2-D ids ``vae_position_ids`` [V] and grids ``vae_grids``; ``vae_timesteps``
    [V] the raw N(0, 1) draw of each noisy image (``-inf`` for clean ones).
    Targets: ``mse_indexes`` [M] noisy latent slots (velocity predicted there), ``ce_indexes`` [C] with
    ``label_ids`` [C] and ``ce_weights`` [C].
    Model inputs set by whoever knows them (training loss / sampler): ``latents`` [V, p*p*C] and
    ``latent_t`` [V] in [0, 1]. ``meta``: provenance (data indexes, data-loader state); never read by the
    model.
    """

    sample_lens: list[int]
    split_lens: list[list[int]]
    attn_modes: list[list[str]]
    position_ids: torch.Tensor
    text_ids: torch.Tensor
    text_indexes: torch.Tensor
    instruction_indexes: torch.Tensor
    vit_pixels: torch.Tensor
    vit_indexes: torch.Tensor
    vit_position_ids: torch.Tensor
    vit_grids: list[tuple[int, int]]
    vae_images: torch.Tensor | None
    vae_indexes: torch.Tensor
    vae_position_ids: torch.Tensor
    vae_grids: list[tuple[int, int]]
    vae_timesteps: torch.Tensor
    mse_indexes: torch.Tensor
    ce_indexes: torch.Tensor
    label_ids: torch.Tensor
    ce_weights: torch.Tensor
    latents: torch.Tensor | None = None
    latent_t: torch.Tensor | None = None
    meta: dict = field(default_factory=dict)

    @property
    def length(self) -> int:
        return int(sum(self.sample_lens))

    @property
    def vit_seqlens(self) -> list[int]:
        return [h * w for h, w in self.vit_grids]

    def attention_masks(self, device: str | torch.device = "cpu") -> list[torch.Tensor]:
        """One bool [L_i, L_i] mask per sample (see ``sample_attention_mask``)."""
        return [sample_attention_mask(s, m, device) for s, m in zip(self.split_lens, self.attn_modes)]

    def with_latents(self, latents: torch.Tensor, latent_t: torch.Tensor) -> PackedSequence:
        """A copy whose VAE slots hold ``latents`` [V, p*p*C] at noise levels ``latent_t`` [V]."""
        return dataclasses.replace(self, latents=latents, latent_t=latent_t)

    def _map_tensors(self, fn) -> PackedSequence:
        fields_ = dataclasses.fields(self)
        moved = {f.name: fn(getattr(self, f.name)) for f in fields_ if torch.is_tensor(getattr(self, f.name))}
        return dataclasses.replace(self, **moved)

    def to(self, device: str | torch.device, non_blocking: bool = True) -> PackedSequence:
        """A copy with every tensor on ``device``."""
        return self._map_tensors(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> PackedSequence:
        """Called by a DataLoader with ``pin_memory=True``."""
        return self._map_tensors(lambda t: t.pin_memory())


def concat_sequences(a: PackedSequence, b: PackedSequence) -> PackedSequence:
    """``b``'s samples appended after ``a``'s (indexes shifted by ``a.length``). ``b``'s VAE images must be
    grid-only (``vae_images`` None): the pixels stay ``a``'s, so ``vae_images`` covers ``a``'s grids only."""
    if b.vae_images is not None:
        raise ValueError("concat_sequences: the appended sequence must not carry VAE pixels")
    n = a.length

    def cat(x: torch.Tensor, y: torch.Tensor, shift: int = 0) -> torch.Tensor:
        return torch.cat([x, y.to(x.device) + shift])

    if a.latents is not None or b.latents is not None:
        raise ValueError("concat_sequences: set the latents after concatenating (seq.with_latents)")
    return PackedSequence(
        sample_lens=a.sample_lens + b.sample_lens,
        split_lens=a.split_lens + b.split_lens,
        attn_modes=a.attn_modes + b.attn_modes,
        position_ids=cat(a.position_ids, b.position_ids),
        text_ids=cat(a.text_ids, b.text_ids),
        text_indexes=cat(a.text_indexes, b.text_indexes, n),
        instruction_indexes=cat(a.instruction_indexes, b.instruction_indexes, n),
        vit_pixels=torch.cat([a.vit_pixels, b.vit_pixels.to(a.vit_pixels.device, a.vit_pixels.dtype)]),
        vit_indexes=cat(a.vit_indexes, b.vit_indexes, n),
        vit_position_ids=cat(a.vit_position_ids, b.vit_position_ids),
        vit_grids=a.vit_grids + b.vit_grids,
        vae_images=a.vae_images,
        vae_indexes=cat(a.vae_indexes, b.vae_indexes, n),
        vae_position_ids=cat(a.vae_position_ids, b.vae_position_ids),
        vae_grids=a.vae_grids + b.vae_grids,
        vae_timesteps=cat(a.vae_timesteps, b.vae_timesteps),
        mse_indexes=cat(a.mse_indexes, b.mse_indexes, n),
        ce_indexes=cat(a.ce_indexes, b.ce_indexes, n),
        label_ids=cat(a.label_ids, b.label_ids),
        ce_weights=cat(a.ce_weights, b.ce_weights),
        meta=a.meta,
    )


# ---------------------------------------------------------------------------------------- builder
class SequenceBuilder:
    """Appends samples item by item and ``build()``s the ``PackedSequence``.

    ``start_sample(rope)`` opens a sample whose first position is ``rope`` (inference passes a context's
    next position), the ``add_*`` methods append one split each, ``end_sample()`` closes it.
    """

    def __init__(self, markers: SpecialTokenIds | dict, geometry: SequenceGeometry):
        """``markers``: the four special token ids (``SpecialTokenIds`` or a dict of its fields)."""
        self.markers = markers if isinstance(markers, SpecialTokenIds) else SpecialTokenIds(**markers)
        self.geometry = geometry
        self.curr = 0  # tokens in the pack so far
        self._rope: int | None = None
        self._splits: list[int] = []
        self._modes: list[str] = []
        self._sample_start = 0
        self.sample_lens: list[int] = []
        self.split_lens: list[list[int]] = []
        self.attn_modes: list[list[str]] = []
        self.positions: list[int] = []
        self.text_ids: list[int] = []
        self.text_indexes: list[int] = []
        self.instruction_indexes: list[int] = []
        self.vit_pixels: list[torch.Tensor] = []
        self.vit_indexes: list[int] = []
        self.vit_position_ids: list[torch.Tensor] = []
        self.vit_grids: list[tuple[int, int]] = []
        self.vae_images: list[torch.Tensor] = []
        self.vae_indexes: list[int] = []
        self.vae_position_ids: list[torch.Tensor] = []
        self.vae_grids: list[tuple[int, int]] = []
        self.vae_timesteps: list[float] = []
        self.mse_indexes: list[int] = []
        self.ce_indexes: list[int] = []
        self.label_ids: list[int] = []
        self.ce_weights: list[float] = []
        self.data_indexes: list = []

    # -------------------------------------------------------------- samples
    @property
    def rope(self) -> int:
        if self._rope is None:
            raise RuntimeError("start_sample() first")
        return self._rope

    def start_sample(self, rope: int = 0) -> SequenceBuilder:
        if self._rope is not None:
            raise RuntimeError("the previous sample was not ended")
        self._rope, self._splits, self._modes, self._sample_start = rope, [], [], self.curr
        return self

    def end_sample(self, data_indexes=None) -> SequenceBuilder:
        self.rope  # noqa: B018 - raises when no sample is open
        self.sample_lens.append(self.curr - self._sample_start)
        self.split_lens.append(self._splits)
        self.attn_modes.append(self._modes)
        if data_indexes is not None:
            self.data_indexes.append(data_indexes)
        self._rope = None
        return self

    def _tokens(self, ids: list[int]) -> range:
        span = range(self.curr, self.curr + len(ids))
        self.text_ids.extend(ids)
        self.text_indexes.extend(span)
        self.curr += len(ids)
        return span

    def _split(self, length: int, mode: str, positions: list[int]) -> None:
        self._splits.append(length)
        self._modes.append(mode)
        self.positions.extend(positions)

    # -------------------------------------------------------------- items
    def add_text(
        self, ids: list[int], loss: bool = False, wrap: bool = True, instruction: bool = True
    ) -> range:
        """``<|im_start|> ids <|im_end|>`` (``wrap=False``: the ids alone, e.g. one decoded token), causal,
        one position per token. ``loss``: CE on the positions of ``[bos] + ids`` with labels ``ids + [eos]``,
        weight 1/sqrt(len(ids) + 1). ``instruction``: the bridge compares images with these tokens.
        Returns the tokens' indexes."""
        m = self.markers
        tokens = [m.bos_token_id, *ids, m.eos_token_id] if wrap else list(ids)
        span = self._tokens(tokens)
        if instruction:
            self.instruction_indexes.extend(span)
        if loss:
            if not wrap:
                raise ValueError("a text loss needs the wrapped form (labels end with <|im_end|>)")
            n = len(ids) + 1
            self.ce_indexes.extend(span[:n])
            self.label_ids.extend([*ids, m.eos_token_id])
            self.ce_weights.extend([1.0 / n**0.5] * n)
        self._split(len(tokens), "causal", list(range(self.rope, self.rope + len(tokens))))
        self._rope = self.rope + len(tokens)
        return span

    def add_vit_image(self, image: torch.Tensor) -> range:
        """image [3, H, W] in [-1, 1], H and W multiples of the ViT patch size. Returns its patch indexes."""
        g = self.geometry
        h, w = image.shape[1] // g.vit_patch_size, image.shape[2] // g.vit_patch_size
        self._tokens([self.markers.start_of_image])
        span = range(self.curr, self.curr + h * w)
        self.vit_pixels.append(patchify(image, g.vit_patch_size))
        self.vit_indexes.extend(span)
        self.vit_position_ids.append(
            flattened_position_ids(h, w, g.vit_max_patch_per_side, g.interpolate_pos)
        )
        self.vit_grids.append((h, w))
        self.curr += h * w
        self._tokens([self.markers.end_of_image])
        self._split(h * w + 2, "full", [self.rope] * (h * w + 2))
        self._rope = self.rope + 1
        return span

    def add_vae_image(
        self,
        image: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
        noisy: bool = False,
        timestep: float = float("-inf"),
    ) -> range:
        """The VAE view of an image: pixels [3, H, W] (kept for the trainer's VAE) or just its latent
        ``grid`` (h, w). ``noisy``: a generation target (velocity predicted on its slots, raw timestep
        ``timestep``, invisible to other splits, takes no new position); otherwise a clean condition."""
        g = self.geometry
        if image is not None:
            h, w = image.shape[1] // g.latent_downsample, image.shape[2] // g.latent_downsample
            self.vae_images.append(image)
        elif grid is not None:
            h, w = grid
        else:
            raise ValueError("add_vae_image needs the image or its latent grid")
        n = h * w
        self._tokens([self.markers.start_of_image])
        span = range(self.curr, self.curr + n)
        self.vae_indexes.extend(span)
        self.vae_position_ids.append(flattened_position_ids(h, w, g.max_latent_size, g.interpolate_pos))
        self.vae_grids.append((h, w))
        self.vae_timesteps.extend([timestep if noisy else float("-inf")] * n)
        if noisy:
            self.mse_indexes.extend(span)
        self.curr += n
        self._tokens([self.markers.end_of_image])
        self._split(n + 2, "noise" if noisy else "full", [self.rope] * (n + 2))
        if not noisy:
            self._rope = self.rope + 1
        return span

    def skip_image(self) -> None:
        """A dropped image (condition dropout): no tokens, but it keeps its RoPE position."""
        self._rope = self.rope + 1

    # -------------------------------------------------------------- result
    def build(self) -> PackedSequence:
        if self._rope is not None:
            raise RuntimeError("the last sample was not ended")
        padded = None
        if self.vae_images:
            hmax = max(t.shape[1] for t in self.vae_images)
            wmax = max(t.shape[2] for t in self.vae_images)
            first = self.vae_images[0]
            padded = torch.zeros((len(self.vae_images), first.shape[0], hmax, wmax), dtype=first.dtype)
            for i, t in enumerate(self.vae_images):
                padded[i, :, : t.shape[1], : t.shape[2]] = t
        vit_dim = 3 * self.geometry.vit_patch_size**2

        def cat(parts: list[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
            return torch.cat(parts) if parts else empty

        return PackedSequence(
            sample_lens=list(self.sample_lens),
            split_lens=[list(s) for s in self.split_lens],
            attn_modes=[list(m) for m in self.attn_modes],
            position_ids=_long(self.positions),
            text_ids=_long(self.text_ids),
            text_indexes=_long(self.text_indexes),
            instruction_indexes=_long(self.instruction_indexes),
            vit_pixels=cat(self.vit_pixels, torch.zeros(0, vit_dim)),
            vit_indexes=_long(self.vit_indexes),
            vit_position_ids=cat(self.vit_position_ids, _long([])),
            vit_grids=list(self.vit_grids),
            vae_images=padded,
            vae_indexes=_long(self.vae_indexes),
            vae_position_ids=cat(self.vae_position_ids, _long([])),
            vae_grids=list(self.vae_grids),
            vae_timesteps=torch.tensor(self.vae_timesteps, dtype=torch.float32),
            mse_indexes=_long(self.mse_indexes),
            ce_indexes=_long(self.ce_indexes),
            label_ids=_long(self.label_ids),
            ce_weights=torch.tensor(self.ce_weights, dtype=torch.float32),
            meta={"data_indexes": list(self.data_indexes)},
        )
