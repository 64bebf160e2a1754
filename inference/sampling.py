"""``SamplingConfig``: the one place that names the image-sampling settings, their defaults and their flags.

The defaults are Scone's published single-case settings; a model folder may override any of them in the
"inference" object of its ``scone_config.json`` (the tiny ShapeWorld model does: 96 px, 25 steps), and a
caller overrides them per call (``SconePipeline.generate(..., num_timesteps=30)``) or per command line
(``--num_timesteps 30``). Formulas: docs/architecture.md §6.
"""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

from inference.flow_sampler import RENORM_TYPES


@dataclass(frozen=True)
class SamplingConfig:
    height: int = 1024
    width: int = 1024
    num_timesteps: int = 50  # Euler steps = num_timesteps - 1
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 2.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)  # CFG applies for t in (lo, hi]
    cfg_renorm_type: str = "text_channel"
    cfg_renorm_min: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "cfg_interval", tuple(float(v) for v in self.cfg_interval))
        if len(self.cfg_interval) != 2:
            raise ValueError(f"cfg_interval needs two values, got {self.cfg_interval}")
        if self.cfg_renorm_type not in RENORM_TYPES:
            raise ValueError(f"cfg_renorm_type must be one of {RENORM_TYPES}, got {self.cfg_renorm_type!r}")

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls))

    def replace(self, **overrides) -> SamplingConfig:
        """A copy with the given settings; ``None`` values keep the current one. Unknown names raise."""
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise TypeError(f"unknown sampling settings {unknown}; known: {list(self.names())}")
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def add_sampling_args(p: argparse.ArgumentParser) -> None:
    """One flag per ``SamplingConfig`` field, default None (= the model's setting)."""
    defaults = SamplingConfig()
    for f in dataclasses.fields(SamplingConfig):
        value = getattr(defaults, f.name)
        shown = " ".join(str(v) for v in value) if isinstance(value, tuple) else value
        kw: dict = {"default": None, "help": f"default: the model's (scone_config.json), else {shown}"}
        if isinstance(value, tuple):
            kw.update(type=type(value[0]), nargs=len(value))
        elif f.name == "cfg_renorm_type":
            kw["choices"] = RENORM_TYPES
        else:
            kw["type"] = type(value)
        p.add_argument(f"--{f.name}", **kw)


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags given on a command line (those left at None are omitted)."""
    return {n: getattr(args, n) for n in SamplingConfig.names() if getattr(args, n, None) is not None}
