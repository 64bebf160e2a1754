"""Step caching for the denoising loop: skip network evaluations and extrapolate the velocities instead.

A TaylorSeer-style policy (Liu et al., 2025, "From Reusing to Forecasting"): on *full* steps the network
runs and its output is remembered together with finite-difference derivatives in time; on the steps in
between, each velocity is predicted by a Taylor expansion around the last full step,

    v(t) ~ sum_k D_k (t - t_full)^k / k!,   D_0 = v(t_full),  D_k = (D_{k-1} - D'_{k-1}) / (t_full - t_prev)

where D' are the derivatives remembered at the previous full step. The unit is time ``t`` (the shifted
schedule is not uniform in t), so the derivatives are true d/dt estimates.

Why velocities rather than per-layer features (the original TaylorSeer caches attention and MLP outputs
inside every block): a skipped step then skips the whole network (all layers of the MoT, both experts),
the cache is one latent-sized tensor per derivative order per branch instead of per layer, and the model
code stays untouched (a policy of the sampler, not a fork of the network).

CFG stays exact in structure: every branch (conditional, no-text, no-image) has its own cache entry and
the CFG combination of ``flow_sampler.cfg_combine`` runs on every step with the configured scales, so a
cached step is guided as strongly as a computed one. ``taylorseer_uncond`` extrapolates only the two
unconditional branches (they vary slowly) and computes the conditional one on every step.
"""

from __future__ import annotations

from collections.abc import Hashable

import torch

CACHE_MODES = ("none", "taylorseer", "taylorseer_uncond")


def is_full_step(i: int, n: int, interval: int, warmup: int, final: int) -> bool:
    """Whether Euler step ``i`` of ``n`` runs the network: the first ``warmup`` and last ``final`` steps,
    and every ``interval``-th step in between (counting from the end of the warm-up)."""
    if i < warmup or i >= n - final:
        return True
    return (i - warmup) % interval == 0


def full_steps(n: int, interval: int, warmup: int, final: int) -> list[int]:
    return [i for i in range(n) if is_full_step(i, n, interval, warmup, final)]


class TaylorCache:
    """Per-key (request, branch) Taylor state: the time of the last full evaluation and its derivatives
    [D_0 .. D_order], each shaped like the velocity ([h*w, p*p*C])."""

    def __init__(self, order: int):
        if order < 0:
            raise ValueError(f"cache order must be >= 0, got {order}")
        self.order = order
        self._state: dict[Hashable, tuple[float, list[torch.Tensor]]] = {}

    def __contains__(self, key: Hashable) -> bool:
        return key in self._state

    def update(self, key: Hashable, t: float, v: torch.Tensor) -> None:
        """Remember a computed velocity at time ``t`` and refresh the derivatives from the previous one."""
        derivs = [v]
        prev = self._state.get(key)
        if prev is not None and prev[0] != t:
            t_prev, old = prev
            dt = t - t_prev
            for k in range(min(self.order, len(old))):
                derivs.append((derivs[k] - old[k]) / dt)
        self._state[key] = (t, derivs)

    def predict(self, key: Hashable, t: float) -> torch.Tensor:
        """The Taylor expansion of ``key``'s velocity at time ``t``."""
        t0, derivs = self._state[key]
        dt, out, coef = t - t0, derivs[0].clone(), 1.0
        for k in range(1, len(derivs)):
            coef *= dt / k
            out.add_(derivs[k], alpha=coef)
        return out


class StepCache:
    """The denoising loop's question per step: which (request, branch) evaluations to compute. The answer
    follows ``sampling.cache``: "none" computes every one; the TaylorSeer modes compute all on full steps
    (``is_full_step``) and predict the rest from each key's ``TaylorCache`` history (a key with no history yet
    is computed; "taylorseer_uncond" always computes the conditional branch)."""

    def __init__(self, sampling, num_steps: int):
        self.sampling, self.num_steps = sampling, num_steps
        self.taylor = TaylorCache(sampling.cache_order) if sampling.cache != "none" else None

    def to_compute(self, step: int, keys: list) -> list:
        """The keys (in order) whose velocity the network must compute at Euler step ``step``."""
        s = self.sampling
        if self.taylor is None or is_full_step(
            step, self.num_steps, s.cache_interval, s.cache_warmup_steps, s.cache_final_steps
        ):
            return list(keys)
        only_uncond = s.cache == "taylorseer_uncond"
        return [k for k in keys if k not in self.taylor or (only_uncond and k[1] == "full")]

    def complete(self, t: float, keys: list, computed: dict) -> dict:
        """Every key's velocity at time ``t``: the computed ones (remembered) and predictions for the rest."""
        if self.taylor is None:
            return computed
        for key, v in computed.items():
            self.taylor.update(key, t, v)
        return {k: computed[k] if k in computed else self.taylor.predict(k, t) for k in keys}
