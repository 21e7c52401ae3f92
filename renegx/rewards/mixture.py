"""A weighted sum of rewards, each optionally standardised first: `Σ_i w_i (r_i − μ_i) / σ_i`.

Rewards live on very different scales (HPSv2 ≈ 0.27, PickScore ≈ 21, aesthetic ≈ 5.5, ImageReward ≈ 0 ± 1), so
a mixture either picks weights with that in mind or gives each component its reference (mean, std) and
weights the standardised scores. The statistics are fixed numbers, not running estimates, so a run is
deterministic and resumes exactly. Each call leaves the raw component scores in `last_components` (to log).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from renegx.rewards.base import Reward, RewardError


class RewardMixture(Reward):
    """`Σ_i weights[i] · (r_i − stats[i][0]) / stats[i][1]` per image, float32 `(B,)`.

    rewards: the component rewards (in YAML, a list of `class_path` + `init_args`).
    weights: one per component (default all 1).
    stats: optional (mean, std) per component for standardisation; `null` for a component leaves it raw.
    After each call `last_components` maps each component's name (made unique: `clip`, `clip_2`) to its raw
    detached scores `(B,)`.
    """

    name = "mix"

    def __init__(
        self,
        rewards: list[Reward],
        weights: list[float] | None = None,
        stats: list[tuple[float, float] | None] | None = None,
    ):
        super().__init__()
        if not rewards:
            raise RewardError("a reward mixture needs at least one reward")
        weights = [1.0] * len(rewards) if weights is None else [float(w) for w in weights]
        stats = [None] * len(rewards) if stats is None else list(stats)
        for label, values in (("weights", weights), ("stats", stats)):
            if len(values) != len(rewards):
                raise RewardError(
                    f"got {len(values)} {label} for {len(rewards)} rewards; expected one per reward"
                )
        for i, pair in enumerate(stats):
            if pair is not None and (len(pair) != 2 or not float(pair[1]) > 0):
                raise RewardError(f"stats[{i}] must be (mean, std) with std > 0, got {pair}")
        self.rewards = nn.ModuleList(rewards)
        self.weights = weights
        self.stats = [None if pair is None else (float(pair[0]), float(pair[1])) for pair in stats]
        self.labels = self._unique_labels([reward.name for reward in rewards])
        self.last_components: dict[str, Tensor] = {}
        self.freeze()

    @staticmethod
    def _unique_labels(names: list[str]) -> list[str]:
        seen: dict[str, int] = {}
        labels = []
        for name in names:
            seen[name] = seen.get(name, 0) + 1
            labels.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
        return labels

    def score(self, images: Tensor, prompts: list[str]) -> Tensor:
        total = torch.zeros(images.shape[0], device=images.device)
        components = {}
        for label, reward, weight, pair in zip(
            self.labels, self.rewards, self.weights, self.stats, strict=True
        ):
            raw = reward(images, prompts)
            components[label] = raw.detach()
            total = total + weight * (raw if pair is None else (raw - pair[0]) / pair[1])
        self.last_components = components
        return total
