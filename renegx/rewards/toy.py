"""The toy world's judges behind the Reward interface: `toy-pref` (training reward) and `toy-independent`."""

from __future__ import annotations

from torch import Tensor

from renegx.rewards.base import Reward
from renegx.rewards.clip_score import ClipScore


class ToyPreference(ClipScore):
    """The toy preference judge: a CLIP model trained to score clean, matching pictures above defective or
    mismatched ones; `scale · cos(image, text)` like `ClipScore`."""

    name = "toy-pref"

    def __init__(self, scale: float = 1.0):
        from renegx.toyworld import weights_folder

        super().__init__(model=str(weights_folder() / "judges" / "preference"), scale=scale)


class ToyIndependentJudge(Reward):
    """The toy independent judge (CNN image tower, bag-of-words text tower, other seed and data): a check on
    reward hacking of `toy-pref`, differentiable like any reward."""

    name = "toy-independent"

    def __init__(self):
        super().__init__()
        from renegx.toyworld import toy_tokenizer, weights_folder
        from renegx.toyworld.networks import IndependentJudge, load_module

        self.judge = load_module(IndependentJudge, weights_folder() / "judges" / "independent")
        self.tokenizer = toy_tokenizer()
        self.freeze()

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        from renegx.toyworld.networks import at_toy_resolution, words_of

        return self.judge(at_toy_resolution(images), words_of(self.tokenizer, prompts))
