"""Scripted stand-ins for the external models: deterministic, instant, offline.

They make the adaptive samplers testable (a scripted oracle pins what a VLM "sees" at each query) and let
`--model tiny` demos run every sampler without any download. Each counts its uses in `calls`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch

from renegx.samplers.protocols import Verdict


class FixedCaptioner:
    """Returns the same caption for every image."""

    def __init__(self, caption: str = "a blurry picture"):
        self.text = caption
        self.calls = 0

    def caption(self, images: torch.Tensor) -> list[str]:
        self.calls += 1
        return [self.text] * images.shape[0]


class ScriptedOracle:
    """Answers from a script, one entry per `ask` call (the last entry repeats when the script runs out).

    `ScriptedOracle([["cat"], ["dog"], ["cat"], [""]])` answers "cat", "dog", "cat", "" to four questions.
    """

    def __init__(self, script: Sequence[Sequence[str]]):
        if not script:
            raise ValueError("a scripted oracle needs at least one answer list")
        self.script = [list(answers) for answers in script]
        self.calls = 0
        self.questions: list[str] = []

    def ask(self, image: torch.Tensor, question: str, top_k: int = 1) -> list[str]:
        answers = self.script[min(self.calls, len(self.script) - 1)]
        self.calls += 1
        self.questions.append(question)
        return answers[:top_k]


class ScriptedVerifier:
    """Verdicts from a script of `correct` flags (and optional scores), one per call; the last repeats."""

    def __init__(self, correct: Sequence[int | bool], scores: Sequence[float] | None = None):
        if not correct:
            raise ValueError("a scripted verifier needs at least one verdict")
        self.correct = [bool(c) for c in correct]
        self.scores = list(scores) if scores is not None else [float(c) for c in self.correct]
        self.calls = 0

    def verify(self, image: torch.Tensor, prompt: str, checklist: str = "") -> Verdict:
        call = self.calls
        self.calls += 1
        correct = self.correct[min(call, len(self.correct) - 1)]
        score = self.scores[min(call, len(self.scores) - 1)]
        return Verdict(correct, float(score), f"scripted verdict {call}")


class HashTextEmbedder:
    """A fixed random feature per word (seeded by its hash), averaged over the words of a text."""

    def __init__(self, dim: int = 32):
        self.dim = dim
        self.calls = 0

    def _word(self, word: str) -> torch.Tensor:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        return torch.randn(self.dim, generator=torch.Generator().manual_seed(seed))

    def embed(self, texts: list[str]) -> torch.Tensor:
        self.calls += 1
        rows = []
        for text in texts:
            words = text.lower().split() or [""]
            rows.append(torch.stack([self._word(w) for w in words]).mean(0))
        return torch.stack(rows)
