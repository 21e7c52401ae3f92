"""Counting network function evaluations (NFE): the cost unit of every sampler.

`NFECounter` wraps the denoiser (a UNet or a transformer) and counts each batch item of each forward as one
evaluation, so `cat([negative, prompt])` for one image is 2 NFE whether it runs as one batched call or two.
"""

from __future__ import annotations

import torch


class NFECounter:
    """A callable stand-in for `network` that counts `nfe` (batch items) and `forwards` (calls)."""

    def __init__(self, network: torch.nn.Module):
        self.network = network
        self.nfe = 0
        self.forwards = 0

    def __call__(self, sample: torch.Tensor, *args, **kwargs):
        self.nfe += int(sample.shape[0])
        self.forwards += 1
        return self.network(sample, *args, **kwargs)

    def __getattr__(self, name: str):
        if name == "network":  # not set yet (unpickling): avoid recursing into __getattr__
            raise AttributeError(name)
        return getattr(self.network, name)
