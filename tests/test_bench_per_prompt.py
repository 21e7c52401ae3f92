"""The per-prompt benchmark runs end to end on the tiny model; its no-grad clock counts the right calls."""

import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import per_prompt  # noqa: E402
from bench.clocks import no_grad_seconds  # noqa: E402


def test_benchmark_runs_on_the_tiny_model_and_ends_with_the_speedup():
    lines = []
    speedup = per_prompt.main(
        [
            *("--prompts", "2", "--batch-prompts", "2", "--steps", "3", "--stop-steps", "2"),
            *("--max-steps", "2", "--patience", "1", "--eval-seeds", "0", "--fresh-seeds", "7"),
            *("--rollout-rounds", "1", "--threads", "1"),
        ],
        report=lines.append,
    )
    assert speedup > 0
    assert lines[-1] == f"speedup_vs_one_at_a_time: {speedup:.2f}"
    assert any(line.startswith("agreement: 2/2 prompts") for line in lines)
    shares = [line for line in lines if "of the time in no-grad UNet calls" in line]
    assert [line.split(":")[0] for line in shares] == ["one_at_a_time", "batched"]
    assert any(line.startswith("no-grad rollout, cost per latent at 2 latents over at 4:") for line in lines)
    gains = [line for line in lines if line.startswith("fresh seeds [7]")]
    assert len(gains) == 2  # the tuning reward and the independent judge
    assert all(re.search(r"gain \[95% CI\] [+-]\d\.\d{5} \[[+-]\d\.\d{5}, [+-]\d\.\d{5}\]", g) for g in gains)


def test_no_grad_clock_counts_only_calls_without_grad():
    layer = torch.nn.Linear(4, 4)
    inputs = torch.randn(2, 4)
    with no_grad_seconds(layer) as seconds:
        layer(inputs)
    assert seconds == [0.0]
    with no_grad_seconds(layer) as seconds:
        with torch.no_grad():
            layer(inputs)
    assert seconds[0] > 0
    assert not layer._forward_hooks and not layer._forward_pre_hooks


def test_prompt_source_replaces_the_worlds_own_prompts(tmp_path):
    from bench.models import build_world

    source = tmp_path / "mine.txt"
    source.write_text("a red star\na blue moon\na green tree\n")
    world = build_world("tiny", prompt_pool=2, prompt_source=str(source))
    assert world.prompts == ["a red star", "a blue moon"]
    assert per_prompt.parse_args(["--prompt-source", str(source)]).prompt_source == str(source)
