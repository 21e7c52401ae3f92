"""Plain classifier-free guidance on the composer: `ε̃ = ε_base + w (ε_c − ε_base)`.

The base is the null, a text negative, a learned embedding or a bank row (primitive B: what ReNeg was trained
for). With the common options it also carries windowed/delayed negatives. Cost: 2T NFE (T when w = 1), plus
one NFE per step and extra term in its window.
"""

from __future__ import annotations

import torch

from renegx.samplers.base import Sampler, SampleRecord, SamplerOptions
from renegx.samplers.composer import Negative


class CFGSampler(Sampler):
    name = "cfg"
    Options = SamplerOptions

    def _run(self, prompt: str, seed: int, base: Negative, record: SampleRecord) -> tuple[torch.Tensor, dict]:
        latents = self.start(seed)
        positive = self.model.encode([prompt])
        return self.denoise_loop(positive, latents, self.plan(base), record), {}
