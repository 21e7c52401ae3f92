"""Judges: the rewards that score an evaluation's images, by name, with the scale each is reported at.

| judge | reward | reported as |
|---|---|---|
| `hpsv2.1`, `hpsv2.0` | HPSv2 with that checkpoint (explicit `hps_version`: v2.0 ≠ v2.1) | ×100 |
| `hpsv3` | HPSv3 (μ of its Qwen2-VL-7B reward head; about 16 GB of weights in bfloat16) | as is |
| `pickscore` | PickScore (logit scale × cosine) | as is |
| `imagereward` | ImageReward (normalised) | as is |
| `aesthetic` | LAION aesthetic predictor (1–10) | as is |
| `clip` | CLIP score, ×100 cosine | ×100 |
| `toy-pref`, `toy-independent` | the toy world's training judge and its independent judge | as is |

Any other name registered in `renegx.rewards.REWARDS` works too. Options (e.g. `model=/models/clip-l`, or
`model=tiny` for the tiny test judges) go to the reward's constructor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from renegx.errors import RenegxError


class JudgeError(RenegxError):
    """An unknown or ambiguous judge; the message is one line."""


# name -> (reward registry name, constructor defaults, report scale, hps_version)
PRESETS: dict[str, tuple[str, dict, float, str | None]] = {
    "hpsv2.0": ("hpsv2", {"model": "v2.0"}, 100.0, "v2.0"),
    "hpsv2.1": ("hpsv2", {"model": "v2.1"}, 100.0, "v2.1"),
    "hpsv3": ("hpsv3", {}, 1.0, None),
    "pickscore": ("pickscore", {}, 1.0, None),
    "imagereward": ("imagereward", {}, 1.0, None),
    "aesthetic": ("aesthetic", {}, 1.0, None),
    "clip": ("clip", {}, 100.0, None),
}

# The judges a benchmark is scored by when --judges is not given: its own scorer first, then judges
# independent of it (a gain seen by one judge only is a sign of reward hacking).
NATURAL_JUDGES: dict[str, tuple[str, ...]] = {
    "hpsv2": ("hpsv2.1", "pickscore", "imagereward"),
    "parti": ("pickscore", "hpsv2.1", "clip"),
    "imagereward": ("imagereward", "pickscore", "hpsv2.1"),
    "toyworld": ("toy-pref", "toy-independent"),
}
PROMPT_FILE_JUDGES = ("pickscore", "hpsv2.1", "imagereward")


@dataclass(frozen=True)
class Judge:
    """A named reward: `reward` and `options` build it, scores are multiplied by `scale` in reports."""

    name: str
    reward: str
    options: dict = field(default_factory=dict)
    scale: float = 1.0
    hps_version: str | None = None

    def build(self):
        from renegx.rewards import build_reward

        return build_reward(self.reward, **self.options)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "reward": self.reward,
            "options": self.options,
            "scale": self.scale,
            "hps_version": self.hps_version,
        }


def natural_judges(benchmark: str, model: str = "") -> list[str]:
    """The default judges of a benchmark name; a prompt file gets the toy world's judges when `model` is one
    of its generators (the hub judges would judge pictures of another world), else `PROMPT_FILE_JUDGES`."""
    from renegx.toyworld import TOY_MODELS

    if benchmark not in NATURAL_JUDGES and model in TOY_MODELS:
        return list(NATURAL_JUDGES["toyworld"])
    return list(NATURAL_JUDGES.get(benchmark, PROMPT_FILE_JUDGES))


def resolve_judge(name: str, options: dict | None = None) -> Judge:
    """The judge `name` with constructor `options` over its defaults."""
    options = dict(options or {})
    if name == "hpsv2":
        raise JudgeError(
            "judge 'hpsv2' is ambiguous (v2.0 and v2.1 scores are not comparable): use hpsv2.0 or hpsv2.1"
        )
    if name in PRESETS:
        reward, defaults, scale, version = PRESETS[name]
        return Judge(name, reward, {**defaults, **options}, scale, version)
    from renegx.rewards import REWARDS

    if name in REWARDS:
        return Judge(name, name, options)
    raise JudgeError(f"unknown judge '{name}'; known: {', '.join(known_judges())}")


def known_judges() -> list[str]:
    """Every judge name `--judges` takes: the presets and the rewards (an ambiguous `hpsv2` and a mixture,
    which needs its parts, excepted)."""
    from renegx.rewards import REWARDS

    return sorted({*PRESETS, *REWARDS} - {"hpsv2", "mix"})
