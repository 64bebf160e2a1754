"""A memory cache of the frozen VAE's posteriors, for training runs that see the same images many times.

Upstream encodes every image of every pack with the VAE at every step. With a frozen VAE the posterior
(mean, logvar) of an image never changes, so it can be computed once and only the sampling
(``AutoEncoder.sample_posterior``, with the step's generator) redone. On a GPU the encoder is a small part
of a step and this is off by default; on a CPU with the tiny ShapeWorld model it is about half of a step
(0.9 s of 1.8 s for ~45 images at 96 px on 2 cores), and every world image recurs once per epoch.

The key is a hash of the *padded* image tensor (its bytes, shape and dtype): the encoder sees the zero
padding too, so the same picture padded to another canvas is another entry. The sampled latent equals
``vae.encode(padded_images, generator=g)`` up to float rounding between batched and per-image encoder
runs (the noise is drawn in the same order, with the same shape).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import OrderedDict

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from modeling.autoencoder import AutoEncoder
from modeling.files import save_safetensors

logger = logging.getLogger(__name__)


def _raw_bytes(t: torch.Tensor) -> bytes:
    """The bytes of a tensor's values (on the CPU, contiguous), for hashing."""
    return t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes()


def _nbytes(mean: torch.Tensor, logvar: torch.Tensor) -> int:
    return mean.numel() * mean.element_size() + logvar.numel() * logvar.element_size()


def vae_fingerprint(vae: AutoEncoder) -> str:
    """Digest of the encoder's weights: a saved cache is only valid for the VAE that made it."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in sorted(vae.encoder.state_dict().items()):
        h.update(name.encode())
        h.update(_raw_bytes(t.float()))
    return h.hexdigest()


class PosteriorCache:
    """LRU map image-hash -> (mean, logvar) on the CPU, bounded by ``max_bytes``.

    ``hits`` / ``misses`` count images, for the training log.
    """

    def __init__(self, max_bytes: int):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self.max_bytes = max_bytes
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._entries: OrderedDict[bytes, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    @staticmethod
    def key(image: torch.Tensor) -> bytes:
        """Digest of one padded image [3, H, W] (content, shape, dtype)."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{tuple(image.shape)}|{image.dtype}".encode())
        h.update(_raw_bytes(image))
        return h.digest()

    def _put(self, key: bytes, mean: torch.Tensor, logvar: torch.Tensor) -> None:
        size = _nbytes(mean, logvar)
        if size > self.max_bytes:
            return
        self._entries[key] = (mean, logvar)
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, evicted = self._entries.popitem(last=False)
            self.bytes -= _nbytes(*evicted)

    @torch.no_grad()
    def encode(
        self, vae: AutoEncoder, images: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Drop-in for ``vae.encode(images, generator=generator)``: [B, 3, H, W] -> [B, z, H/8, W/8].

        Images not in the cache are encoded together in one batch; the cached posteriors stay on the CPU
        and are moved to the images' device for sampling.
        """
        keys = [self.key(img) for img in images]
        missing = [i for i, k in enumerate(keys) if k not in self._entries]
        fresh: dict[bytes, tuple[torch.Tensor, torch.Tensor]] = {}
        if missing:
            mean, logvar = vae.posterior(images[missing])
            for j, i in enumerate(missing):
                fresh[keys[i]] = (mean[j].float().cpu(), logvar[j].float().cpu())
        means, logvars = [], []
        for k in keys:
            if k in fresh:
                m, lv = fresh[k]
            else:
                m, lv = self._entries[k]
                self._entries.move_to_end(k)
            means.append(m)
            logvars.append(lv)
        self.misses += len(missing)
        self.hits += len(keys) - len(missing)
        for k, (m, lv) in fresh.items():  # only now: a small cache must not evict this batch's entries early
            self._put(k, m, lv)
        dtype = vae.encoder.conv_in.weight.dtype
        mean = torch.stack(means).to(device=images.device)
        logvar = torch.stack(logvars).to(device=images.device)
        return vae.sample_posterior(mean, logvar, generator=generator).to(dtype)

    # ------------------------------------------------------------------ persistence
    def counters(self) -> dict:
        """What the training log shows."""
        return {
            "vae_cache/hits": self.hits,
            "vae_cache/misses": self.misses,
            "vae_cache/gib": self.bytes / 2**30,
        }

    def save(self, path: str, fingerprint: str) -> None:
        """Write the entries (grouped by latent shape) to ``path`` (safetensors, written atomically)."""
        groups: dict[tuple[int, ...], list[bytes]] = {}
        for k, (m, _) in self._entries.items():
            groups.setdefault(tuple(m.shape), []).append(k)
        tensors = {}
        for i, keys in enumerate(groups.values()):
            tensors[f"g{i}.keys"] = torch.frombuffer(bytearray(b"".join(keys)), dtype=torch.uint8).view(
                len(keys), -1
            )
            tensors[f"g{i}.mean"] = torch.stack([self._entries[k][0] for k in keys])
            tensors[f"g{i}.logvar"] = torch.stack([self._entries[k][1] for k in keys])
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.tmp"
        save_safetensors(tensors, tmp, metadata={"vae": fingerprint, "groups": str(len(groups))})
        os.replace(tmp, path)
        logger.info(
            "VAE posterior cache: saved %d entries (%.2f GiB) to %s", len(self), self.bytes / 2**30, path
        )

    def load(self, path: str, fingerprint: str) -> int:
        """Add the entries saved at ``path``; returns how many. A cache made by another VAE, or an unreadable
        file, is reported and ignored (it is only an optimisation; the run then encodes afresh)."""
        if not os.path.isfile(path):
            return 0
        try:
            with safe_open(path, "pt") as f:
                meta = f.metadata() or {}
            if meta.get("vae") != fingerprint:
                logger.warning(
                    "VAE posterior cache %s was made by another VAE: ignored (it will be rewritten)", path
                )
                return 0
            tensors = load_file(path)
        except (SafetensorError, OSError, ValueError) as e:
            logger.warning(
                "VAE posterior cache %s is unreadable (%s): ignored (it will be rewritten)", path, e
            )
            return 0
        n = 0
        for i in range(int(meta.get("groups", 0))):
            keys, means, logvars = tensors[f"g{i}.keys"], tensors[f"g{i}.mean"], tensors[f"g{i}.logvar"]
            raw, width = keys.numpy().tobytes(), keys.shape[1]  # one copy, then slices (not .tolist())
            # per-entry clones: views would keep a whole group alive after its entries are evicted, and
            # the byte bound would no longer describe the memory held
            for j, (m, lv) in enumerate(zip(means.unbind(0), logvars.unbind(0))):
                self._put(raw[j * width : (j + 1) * width], m.clone(), lv.clone())
                n += 1
        logger.info("VAE posterior cache: loaded %d entries from %s", n, path)
        return n
