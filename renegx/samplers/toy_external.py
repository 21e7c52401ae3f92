"""The toy world's captioner and VQA model behind the sampler Protocols (`--captioner toy`, `--oracle toy`).

Both read the toy captioner network (an attribute network trained on its own data split, not the evaluator's
classifier) and answer in words: shapes, colours, backgrounds and defects ("blurry", "cropped", ...).
"""

from __future__ import annotations

import torch

from renegx.toyworld.networks import HEADS, at_toy_resolution
from renegx.toyworld.scene import DEFECTS

_DEFECT_WORDS = ("wrong", "defect", "quality", "artifact", "problem", "flaw", "bad")


class ToyCaptioner:
    """caption(images) → "a blurry red circle on a white background" (defects first, as web captions do)."""

    def __init__(self):
        from renegx.toyworld import load_attribute_net

        self.net = load_attribute_net("captioner")

    def caption(self, images: torch.Tensor) -> list[str]:
        captions = []
        for row in self.net.describe(at_toy_resolution(images.cpu())):
            defects = " ".join(row["defects"])
            words = " ".join(w for w in (defects, row["colour"], row["shape"]) if w)
            captions.append(f"a {words} on a {row['background']} background")
        return captions


class ToyOracle:
    """ask(image, question): the best answers of the head the question names (shape / colour / background;
    defects for "what is wrong ..."); yes_probability(image, question) for the toy words it mentions."""

    def __init__(self):
        from renegx.toyworld import load_attribute_net

        self.net = load_attribute_net("captioner")

    @torch.no_grad()
    def _probabilities(self, image: torch.Tensor) -> dict[str, dict[str, float]]:
        logits = self.net(at_toy_resolution(image.cpu()))
        out = {
            name: dict(zip(values, logits[name][0].softmax(0).tolist(), strict=True))
            for name, values in HEADS.items()
        }
        out["defects"] = dict(zip(DEFECTS, logits["defects"][0].sigmoid().tolist(), strict=True))
        return out

    @staticmethod
    def _head(question: str) -> str:
        text = question.lower()
        if any(word in text for word in _DEFECT_WORDS):
            return "defects"
        if "background" in text:
            return "background"
        if "colour" in text or "color" in text:
            return "colour"
        return "shape"

    def ask(self, image: torch.Tensor, question: str, top_k: int = 1) -> list[str]:
        head = self._head(question)
        scores = self._probabilities(image)[head]
        ranked = sorted(scores, key=scores.get, reverse=True)
        if head == "defects":
            ranked = [d for d in ranked if scores[d] > 0.5]
        return ranked[:top_k]

    def yes_probability(self, image: torch.Tensor, question: str) -> float:
        """Product of the probabilities of the shape/colour/background words the question mentions; for a
        question naming defects, the probability that none is present."""
        words = set(question.lower().replace('"', " ").replace(",", " ").replace("?", " ").split())
        probabilities = self._probabilities(image)
        answer = 1.0
        for head in HEADS:
            named = words & set(HEADS[head])
            if named:
                answer *= max(probabilities[head][w] for w in named)
        for defect in words & set(DEFECTS):
            answer *= 1.0 - probabilities["defects"][defect]
        return float(answer)
