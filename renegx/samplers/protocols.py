"""The external models the adaptive samplers consult, as small Protocols.

Images are `(B, 3, H, W)` float tensors in [0, 1] (what `SamplingModel.decode` returns). Implementations:
transformers-backed ones in `renegx.samplers.external`, scripted doubles in `renegx.samplers.doubles`, the
rule-based proposer in `renegx.samplers.proposers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch


@dataclass(frozen=True)
class Verdict:
    """A verifier's judgement: is the image right (`correct`), how well (`score` in [0, 1]), and why."""

    correct: bool
    score: float
    reason: str = ""


@runtime_checkable
class Captioner(Protocol):
    def caption(self, images: torch.Tensor) -> list[str]:
        """One caption per image."""
        ...


@runtime_checkable
class VQAOracle(Protocol):
    def ask(self, image: torch.Tensor, question: str, top_k: int = 1) -> list[str]:
        """Up to `top_k` short answers to `question` about one image `(1, 3, H, W)`, best first."""
        ...


@runtime_checkable
class NegativeProposer(Protocol):
    def propose(self, prompt: str, caption: str, reason: str, k: int) -> list[str]:
        """Up to `k` short negative prompts for an image of `prompt` described by `caption`."""
        ...


@runtime_checkable
class Verifier(Protocol):
    def verify(self, image: torch.Tensor, prompt: str, checklist: str = "") -> Verdict:
        """Judge one image `(1, 3, H, W)` against its prompt (and an optional checklist)."""
        ...


@runtime_checkable
class TextEmbedder(Protocol):
    def embed(self, texts: list[str]) -> torch.Tensor:
        """`(N, D)` pooled text features (a text-space score compares their directions)."""
        ...
