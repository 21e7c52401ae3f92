"""Assertions shared by the test modules."""

import re
from pathlib import Path

import pytest


def assert_one_line_error(error_type: type[Exception], call, *substrings: str) -> str:
    """`call()` raises `error_type` with a one-line message holding every substring; returns the message."""
    with pytest.raises(error_type) as caught:
        call()
    message = str(caught.value)
    assert len(message.splitlines()) == 1, message
    for substring in substrings:
        assert substring in message, message
    return message


def assert_estimate(estimate: dict, n: int | None = None) -> None:
    """`estimate` has the one JSON shape of an estimate (docs/evaluation.md): exactly value, low, high and n,
    the units resampled (`n` of them where given), with low <= high."""
    assert set(estimate) == {"value", "low", "high", "n"}, estimate
    assert estimate["low"] <= estimate["high"], estimate
    assert isinstance(estimate["n"], int) and estimate["n"] >= 1, estimate
    if n is not None:
        assert estimate["n"] == n, estimate


def catalogue_rows(catalogue: Path, row: re.Pattern) -> list[tuple[str, str, str]]:
    """(number, command, message) of every docs/errors.md line that `row` matches."""
    rows = []
    for line in catalogue.read_text(encoding="utf-8").splitlines():
        match = row.match(line)
        if match:
            rows.append((match.group(1), match.group("command"), match.group("message")))
    return rows


def module_images(module, prompts: list[str], latents, stop: int):
    """A module's decoded x̂0 at `stop` after its recipe's rollout from `latents`, grad to its negative."""
    from renegx.train.step import predicted_images, rollouts

    backbone, schedule, recipe = module.backbone, module.schedule, module.recipe
    embeds, negative = backbone.encode_prompts(prompts), module.negative_embeds
    (x_t,) = rollouts(backbone, schedule, recipe, latents, negative, embeds, [stop])
    return predicted_images(backbone, schedule, recipe, x_t, stop, negative, embeds)
