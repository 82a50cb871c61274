"""Which denoising step a model evaluation belongs to, so every evaluation of one step uses that step's windows.

Samplers call the denoiser with a σ only. A first evaluation of step i happens at σ_i; sub-step evaluations of
step i (midpoints of dpm_2 / dpmpp_2s, ...) fall strictly between σ_{i+1} and σ_i. Heun-type correctors evaluate
exactly at later schedule σ's, which σ alone cannot tell from the next step's first evaluation, so for those the
sampler's per-step callback (fired once per step, right after its first evaluation) disambiguates.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

# Sampler name -> number of evaluations made at later schedule σ's after step i's callback, as a function of
# (i, sigmas). Correctors evaluate at σ_{i+1} (heun) and also σ_{i+2} (heunpp2), each only while that σ > 0.
_CORRECTORS: dict[str, Callable[[int, Sequence[float]], int]] = {
    "heun": lambda i, s: int(s[i + 1] > 0),
    "heunpp2": lambda i, s: 0 if s[i + 1] == 0 else (1 if i + 2 >= len(s) or s[i + 2] == 0 else 2),
}


class StepTracker:
    def __init__(self, sigmas: Sequence[float], sampler_name: str | None = None):
        self.sigmas = [float(s) for s in sigmas]
        self.steps = len(self.sigmas) - 1
        self._corrector = _CORRECTORS.get(sampler_name or "")
        self._last_callback_step: int | None = None
        self._evals_since_callback = 0

    def on_step_callback(self, step: int) -> None:
        """The sampler reported step `step` (after its first evaluation)."""
        self._last_callback_step = step
        self._evals_since_callback = 0

    def interval_step(self, sigma: float) -> int:
        """Step i with σ_{i+1} < σ ≤ σ_i (schedule σ's matched with a relative tolerance)."""
        for i in range(self.steps):
            if math.isclose(sigma, self.sigmas[i], rel_tol=1e-5, abs_tol=1e-7):
                return i
            if self.sigmas[i + 1] < sigma < self.sigmas[i]:
                return i
        if sigma > self.sigmas[0]:
            return 0
        return self.steps - 1

    def step_for(self, sigma: float) -> int:
        step = self.interval_step(sigma)
        last = self._last_callback_step
        if self._corrector is not None and last is not None:
            pending = self._corrector(last, self.sigmas)
            if self._evals_since_callback < pending and step > last:
                step = last
        self._evals_since_callback += 1
        return step
