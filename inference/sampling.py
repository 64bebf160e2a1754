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
from inference.step_cache import CACHE_MODES

CHOICES = {"cfg_renorm_type": RENORM_TYPES, "cache": CACHE_MODES}


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
    # Step caching (inference/step_cache.py): "none" evaluates the network on every step (exact).
    cache: str = "none"
    cache_interval: int = 4  # a full evaluation every N steps between warm-up and the final steps
    cache_order: int = 1  # Taylor order of the extrapolation
    cache_warmup_steps: int = 3  # first steps always evaluated
    cache_final_steps: int = 1  # last steps always evaluated

    def __post_init__(self) -> None:
        object.__setattr__(self, "cfg_interval", tuple(float(v) for v in self.cfg_interval))
        if len(self.cfg_interval) != 2:
            raise ValueError(f"cfg_interval needs two values, got {self.cfg_interval}")
        if self.cfg_renorm_type not in RENORM_TYPES:
            raise ValueError(f"cfg_renorm_type must be one of {RENORM_TYPES}, got {self.cfg_renorm_type!r}")
        if self.cache not in CACHE_MODES:
            raise ValueError(f"unknown cache {self.cache!r}; choose one of {', '.join(CACHE_MODES)}")
        if self.cache_interval < 1 or self.cache_warmup_steps < 1 or self.cache_final_steps < 0:
            raise ValueError(
                "cache_interval and cache_warmup_steps must be >= 1 and cache_final_steps >= 0, got "
                f"{self.cache_interval}, {self.cache_warmup_steps}, {self.cache_final_steps}"
            )
        if not 0 <= self.cache_order <= 4:
            raise ValueError(f"cache_order must be from 0 to 4, got {self.cache_order}")

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
        elif f.name in CHOICES:
            kw["choices"] = CHOICES[f.name]
        else:
            kw["type"] = type(value)
        p.add_argument(f"--{f.name}", **kw)


def sampling_overrides(args: argparse.Namespace) -> dict:
    """The sampling flags given on a command line (those left at None are omitted)."""
    return {n: getattr(args, n) for n in SamplingConfig.names() if getattr(args, n, None) is not None}
