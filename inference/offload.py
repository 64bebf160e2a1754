"""Offload for small GPUs: keep weights in CPU RAM and bring them to the GPU only while they are used.

``offload="group"``: the LLM's decoder blocks (about 90% of the 7B model) live in pinned CPU memory; just
before a group of ``group_size`` blocks runs, its weights are copied to the GPU, while it runs the next
group's copy is already issued on a side CUDA stream (so the copy overlaps the compute), and after it ran
its GPU copy is dropped. At most two groups are on the GPU at once. Everything else (embeddings,
``lm_head``, the ViT, the VAE, the connectors) stays on the GPU. The price is one host-to-device copy of
the decoder per forward pass: worth it when the model does not fit otherwise.

``offload="model"``: the whole model and VAE stay in CPU RAM between requests and move to the GPU for the
duration of each ``generate`` / ``understand`` call: the GPU is free between requests (to share it with,
say, a judge model), at the cost of one full copy per call.

Both run on any device; on the CPU there is nothing to offload to and the copies are no-ops, which is how
the tests check the bookkeeping.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
from torch import nn

OFFLOAD_MODES = ("none", "model", "group")


class GroupOffload:
    """Stream ``layers`` (called in order, once each per forward) to ``device`` in groups of ``group_size``."""

    def __init__(self, layers: Sequence[nn.Module], device: torch.device, group_size: int = 1):
        if group_size < 1:
            raise ValueError(f"offload group size must be >= 1, got {group_size}")
        self.device = torch.device(device)
        self.groups = [list(layers[i : i + group_size]) for i in range(0, len(layers), group_size)]
        cuda = self.device.type == "cuda"
        self.stream = torch.cuda.Stream(self.device) if cuda else None
        self.host: dict[nn.Parameter, torch.Tensor] = {}
        for group in self.groups:
            for p in self._params(group):
                data = p.data.to("cpu")
                if type(data) is not torch.Tensor:
                    raise ValueError(
                        "offload='group' needs float weights (not int8/fp8: those fit without it)"
                    )
                self.host[p] = data.pin_memory() if cuda else data
                p.data = self.host[p]
        self.pending: dict[int, torch.cuda.Event | None] = {}  # groups copied (or being copied) to the device
        self.copies = 0  # group copies issued (tests, benches)
        self.max_resident = 0
        self.handles = []
        for g, group in enumerate(self.groups):
            self.handles.append(group[0].register_forward_pre_hook(lambda m, a, g=g: self._enter(g)))
            self.handles.append(group[-1].register_forward_hook(lambda m, a, o, g=g: self._leave(g)))

    @staticmethod
    def _params(group: list[nn.Module]):
        for layer in group:
            yield from layer.parameters()

    def _copy(self, g: int) -> None:
        ctx = torch.cuda.stream(self.stream) if self.stream is not None else contextlib.nullcontext()
        with ctx:
            for p in self._params(self.groups[g]):
                p.data = self.host[p].to(self.device, non_blocking=True)
            event = None
            if self.stream is not None:
                event = torch.cuda.Event()
                event.record(self.stream)
        self.pending[g] = event
        self.copies += 1
        self.max_resident = max(self.max_resident, len(self.pending))

    def _enter(self, g: int) -> None:
        if g not in self.pending:
            self._copy(g)
        event = self.pending[g]
        if event is not None:
            compute = torch.cuda.current_stream(self.device)
            compute.wait_event(event)
            for p in self._params(self.groups[g]):
                p.data.record_stream(compute)  # memory made on the side stream, used on this one
        nxt = (g + 1) % len(self.groups)
        if nxt != g and nxt not in self.pending:
            self._copy(nxt)  # prefetch: overlaps this group's compute

    def _leave(self, g: int) -> None:
        for p in self._params(self.groups[g]):
            p.data = self.host[p]
        self.pending.pop(g, None)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class ModelOffload:
    """Whole-model offload: ``with offload.on_device():`` around each call."""

    def __init__(self, modules: Sequence[nn.Module], device: torch.device):
        self.modules, self.device = list(modules), torch.device(device)
        self.moves = 0

    @contextlib.contextmanager
    def on_device(self):
        for m in self.modules:
            m.to(self.device)
        self.moves += 1
        try:
            yield
        finally:
            for m in self.modules:
                m.to("cpu")
            if self.device.type == "cuda":
                torch.cuda.empty_cache()


def apply_group_offload(model: nn.Module, device: torch.device, group_size: int = 1) -> GroupOffload:
    """Move everything but the decoder blocks of a Bagel ``model`` to ``device`` and stream the blocks."""
    layers = model.language_model.model.layers
    keep = {id(p) for layer in layers for p in layer.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.data = p.data.to(device)
    for name, b in model.named_buffers():
        mod = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
        mod._buffers[name.rsplit(".", 1)[-1]] = b.to(device)
    return GroupOffload(layers, device, group_size)
