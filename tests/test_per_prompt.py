"""Per-prompt tuning: per-row Adam, early stopping, batching, banks on disk, shards, resume, the CLI."""

import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import pytest
import torch
from assertions import assert_estimate
from builders import quiet_pipeline

from renegx.cli import train_main
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.fingerprint import text_encoder_fingerprint
from renegx.rewards import ClipScore
from renegx.train.per_prompt import (
    PerPromptError,
    PerPromptSettings,
    PerPromptTuner,
    derived_seed,
    gain_over_global,
    parts_folder,
    report_path,
    step_rows,
    tune_bank,
)
from renegx.train.per_prompt.tuner import ADAM_MOMENTS
from renegx.train.step import StepRecipe

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["a red circle", "a blue square", "a red circle", "a green triangle"]  # one repeat
TUNING = {"num_inference_steps": 3, "recipe": StepRecipe(guidance_scale=7.5, stop_steps=2)}
SETTINGS = {"max_steps": 3, "patience": 2, "eval_seeds": (0, 1), "batch_prompts": 2, "lr": 5e-2}


@pytest.fixture(scope="module")
def reward():
    return ClipScore(model="tiny")


def _tuner(backbone, reward, cls=PerPromptTuner, **settings):
    return cls(backbone, reward, **TUNING, settings=PerPromptSettings(**{**SETTINGS, **settings}))


@pytest.fixture(scope="module")
def global_embedding(tiny_backbone):
    return NegativeEmbedding(
        tiny_backbone.null_embedding(), metadata={"base_model": "tiny", "train_steps": 7}
    )


@pytest.fixture(scope="module")
def finished(tiny_backbone, reward, global_embedding, tmp_path_factory):
    """A bank tuned from PROMPTS in two batches: (tuner, bank path, report)."""
    tuner = _tuner(tiny_backbone, reward)
    out = tune_bank(tuner, PROMPTS, global_embedding, tmp_path_factory.mktemp("bank") / "bank.safetensors")
    return tuner, out, json.loads(report_path(out).read_text())


# -- per-row Adam --------------------------------------------------------------------------------------------


def test_step_rows_is_per_row_adamw_and_freezes_stopped_rows():
    start = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    grads = [torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(i + 1)) for i in range(5)]
    options = {"lr": 0.1, "weight_decay": 0.01}
    rows = start.clone().requires_grad_(True)
    optimizer = torch.optim.AdamW([rows], **options)
    active = torch.ones(3, dtype=torch.bool)
    for step, grad in enumerate(grads):
        if step == 2:  # row 1 stops after two steps; from now on it gets no gradient (as in tune)
            active[1] = False
            frozen = rows[1].detach().clone()
            frozen_moments = {name: optimizer.state[rows][name][1].clone() for name in ADAM_MOMENTS}
        rows.grad = grad * active[:, None, None]
        step_rows(optimizer, rows, active)

    assert torch.equal(rows[1].detach(), frozen)
    for name in ADAM_MOMENTS:
        assert torch.equal(optimizer.state[rows][name][1], frozen_moments[name])
    for index, steps in ((0, 5), (1, 2), (2, 5)):  # each row as if it had had its own AdamW
        alone = start[index : index + 1].clone().requires_grad_(True)
        own = torch.optim.AdamW([alone], **options)
        for grad in grads[:steps]:
            alone.grad = grad[index : index + 1].clone()
            own.step()
        torch.testing.assert_close(rows[index].detach(), alone[0].detach())


# -- the early-stopping rule ---------------------------------------------------------------------------------


class ScriptedTuner(PerPromptTuner):
    """Evaluation rewards come from a script; the gradient is anything that moves the rows."""

    script: dict[str, list[float]] = {}

    def training_loss(self, prompts, negatives, step, ready):
        assert ready == {}
        return (negatives * torch.linspace(-1, 1, negatives.shape[-1])).sum()

    def evaluate_and_roll(self, prompts, negatives, step, along):
        self.along[step] = sorted(along)
        scores = []
        for prompt, row in zip(prompts, negatives, strict=True):
            self.seen[prompt].append(row.clone())
            scores.append(self.script[prompt][len(self.seen[prompt]) - 1])
        return torch.tensor(scores), {}


def test_early_stopping_keeps_the_best_and_counts_ties_and_regressions(tiny_backbone, reward):
    tuner = _tuner(tiny_backbone, reward, cls=ScriptedTuner, max_steps=4, patience=2)
    tuner.seen, tuner.along = defaultdict(list), {}
    tuner.script = {
        "rises": [0.0, 1.0, 2.0, 3.0, 4.0],
        "ties": [0.0, 0.0, 0.0],  # equal to the global embedding is no improvement
        "peak": [0.0, 2.0, 1.0, 2.0, 9.0],  # the 9 comes after patience ran out: never evaluated
        "late": [0.0, -1.0, 3.0, 1.0, 1.0],
    }
    prompts = list(tuner.script)
    start = tiny_backbone.null_embedding()
    rows, results = tuner.tune(prompts, start)
    by_prompt = {r.prompt: r for r in results}
    expected = {"rises": (4, 4, "max_steps"), "ties": (0, 2, "patience"), "peak": (1, 3, "patience")}
    expected["late"] = (2, 4, "patience")
    for prompt, (best, stop, why) in expected.items():
        result = by_prompt[prompt]
        assert (result.best_step, result.stop_step, result.stopped_by) == (best, stop, why), prompt
        assert result.rewards == tuner.script[prompt][: stop + 1]
        assert result.gain == tuner.script[prompt][best] - tuner.script[prompt][0] >= 0
        assert len(tuner.seen[prompt]) == stop + 1  # a stopped prompt is not evaluated again
        assert torch.equal(rows[prompts.index(prompt)], tuner.seen[prompt][best].cpu())
    assert torch.equal(rows[prompts.index("ties")], start[0])  # never worse than global: global kept
    # Next rollouts ride along with an evaluation only for prompts that it cannot stop (patience 2: those
    # that improved at their last step).
    assert tuner.along[1] == tuner.along[2] == sorted(prompts)
    assert tuner.along[3] == ["peak", "rises"] and tuner.along[4] == ["late", "rises"]
    assert not torch.equal(rows[prompts.index("rises")], start[0])


def test_settings_are_checked_and_patience_beyond_max_steps_warns():
    with pytest.warns(UserWarning, match="patience 10 >= max_steps 10"):
        PerPromptSettings(max_steps=10, patience=10)
    for bad, message in (
        ({"max_steps": 0}, "max_steps must be >= 1"),
        ({"patience": 0}, "patience must be >= 1"),
        ({"eval_seeds": ()}, "eval_seeds must not be empty"),
        ({"lr": 0.0}, "lr must be > 0"),
    ):
        with pytest.raises(PerPromptError, match=message):
            PerPromptSettings(**bad)


@pytest.mark.slow
def test_derived_seeds_are_stable_across_processes():
    """Shards and resumes run in other processes: a seed built on the salted `hash()` would differ there."""
    calls = [(0, "a red circle", 1), (0, "a red circle", 2), (7, "a blue square", 0)]
    code = f"from renegx.train.per_prompt import derived_seed; print([derived_seed(*c) for c in {calls!r}])"
    salt = "1" if os.environ.get("PYTHONHASHSEED") != "1" else "2"  # another string-hash salt than ours
    other = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "PYTHONHASHSEED": salt},
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert other.stdout.strip() == str([derived_seed(*call) for call in calls])
    assert derived_seed(0, "a red circle", 1) != derived_seed(0, "a red circle", 2)
    assert derived_seed(0, "stop", 3) == 258207493135655572  # pinned: shards and resumes rely on it


# -- real tuning on tiny models ------------------------------------------------------------------------------


def test_rollouts_riding_along_with_the_evaluation_equal_those_run_apart(tiny_backbone, reward):
    tuner = _tuner(tiny_backbone, reward, train_samples=2)
    # Float rounding only: other batch sizes may pick other kernels. Wrong rows would differ by O(1).
    rounding = {"atol": 1e-4, "rtol": 1e-5}
    prompts = ["a red circle", "a blue square", "a green triangle"]
    null = tiny_backbone.null_embedding()
    rows = null + 0.1 * torch.randn(3, *null.shape[1:], generator=torch.Generator().manual_seed(0))
    along = ["a green triangle", "a red circle"]
    scores, ready = tuner.evaluate_and_roll(prompts, rows, step=2, along=along)
    alone = tuner.seed_rewards(prompts, rows, list(SETTINGS["eval_seeds"])).mean(1)
    torch.testing.assert_close(scores, alone, **rounding)
    assert sorted(ready) == sorted(along)
    latents, negatives, prompt_embeds = tuner._training_batch(prompts, rows, 2)
    own = tuner.guided_rollout(latents, negatives, prompt_embeds, tuner.stop_index(2)).split(2)
    for prompt in along:
        torch.testing.assert_close(ready[prompt], own[prompts.index(prompt)], **rounding)
    with_ready = tuner.training_loss(prompts, rows, 2, ready)  # "a blue square" rolls out here
    torch.testing.assert_close(with_ready, tuner.training_loss(prompts, rows, 2), **rounding)
    assert tuner.evaluate_and_roll(prompts, rows, step=None, along=along)[1] == {}


@pytest.mark.slow
def test_batched_tuning_equals_one_prompt_at_a_time(finished, tiny_backbone, reward, global_embedding):
    tuner, out, report = finished
    bank = EmbeddingBank.load(out)
    for prompt in bank.prompts:
        rows, (alone,) = tuner.tune([prompt], global_embedding.embeds)
        record = report["per_prompt"][bank.prompts.index(prompt)]
        assert (alone.best_step, alone.stop_step) == (record["best_step"], record["stop_step"]), prompt
        torch.testing.assert_close(
            torch.tensor(alone.rewards), torch.tensor(record["rewards"]), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(rows[0], bank.select([prompt]).embeds[0], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_several_training_samples_per_prompt_tune_the_same_batched_as_alone(tiny_backbone, reward):
    tuner = _tuner(tiny_backbone, reward, train_samples=2, max_steps=3, patience=2)
    prompts = ["a red circle", "a blue square", "a green triangle"]
    start = tiny_backbone.null_embedding()
    rows, results = tuner.tune(prompts, start)
    for index, prompt in enumerate(prompts):
        alone_rows, (alone,) = tuner.tune([prompt], start)
        assert (alone.best_step, alone.stop_step) == (results[index].best_step, results[index].stop_step)
        torch.testing.assert_close(
            torch.tensor(alone.rewards), torch.tensor(results[index].rewards), atol=1e-5, rtol=0
        )
        torch.testing.assert_close(alone_rows[0], rows[index], atol=1e-4, rtol=0)  # Adam: rounding, lr-scaled
    assert any(result.best_step > 0 for result in results)


def test_bank_never_scores_below_global_on_the_evaluation_seeds(finished, tiny_backbone, reward):
    """Re-measured independently: the diffusers pipeline draws the evaluation images from the same seeds."""
    tuner, out, report = finished
    bank = EmbeddingBank.load(out)
    pipe = quiet_pipeline(tiny_backbone)
    seeds = list(SETTINGS["eval_seeds"])

    def mean_reward(prompt, negative_kwargs):
        images = pipe(
            [prompt] * len(seeds),
            num_inference_steps=TUNING["num_inference_steps"],
            guidance_scale=TUNING["recipe"].guidance_scale,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            output_type="pt",
            **negative_kwargs,
        ).images
        return reward(images, [prompt] * len(seeds)).mean().item()

    for record in report["per_prompt"]:
        prompt = record["prompt"]
        with_bank = mean_reward(prompt, bank.for_prompts(pipe, [prompt] * len(seeds)))
        with_global = mean_reward(
            prompt, {"negative_prompt_embeds": bank.fallback.embeds.expand(len(seeds), -1, -1)}
        )
        assert with_bank >= with_global - 1e-5, (prompt, with_bank, with_global)
        assert with_bank == pytest.approx(record["rewards"][record["best_step"]], abs=1e-4)
        assert with_global == pytest.approx(record["rewards"][0], abs=1e-4)
    assert report["summary"]["improved"] >= 1  # the lr is large enough for tiny to move


def test_bank_file_and_report_map_repeats_once(finished, global_embedding):
    tuner, out, report = finished
    bank = EmbeddingBank.load(out)
    assert bank.prompts == ["a red circle", "a blue square", "a green triangle"]
    assert torch.equal(bank.fallback.embeds, global_embedding.embeds)
    assert bank.metadata["base_model"] == "tiny" and bank.metadata["global_train_steps"] == "7"
    fingerprint = text_encoder_fingerprint(tuner.backbone.text_encoders)
    assert fingerprint.startswith("s1:") and bank.metadata["text_encoder_fingerprint"] == fingerprint
    assert json.loads(bank.metadata["per_prompt_eval_seeds"]) == [0, 1]
    assert bank.metadata["per_prompt_max_steps"] == "3" and bank.metadata["per_prompt_patience"] == "2"
    assert [r["occurrences"] for r in report["per_prompt"]] == [2, 1, 1]
    assert [r["row"] for r in report["per_prompt"]] == [0, 1, 2]
    assert report["summary"]["prompts"] == 3 and report["summary"]["repeats"] == 1
    for record in report["per_prompt"]:
        assert (
            record["gain"] >= 0
            and 1 <= record["stop_step"] <= 3
            and len(record["rewards"]) == 1 + record["stop_step"]
        )
    assert not parts_folder(out).exists()  # the bank is whole: its parts are gone


def _counting(tuner, monkeypatch, interrupt_after: int | None = None) -> list[str]:
    """The prompts `tuner.tune` is called with from now on; the run stops (as by Ctrl-C) once
    `interrupt_after` prompts are tuned."""
    tuned: list[str] = []

    def counting(prompts, global_embeds):
        if interrupt_after is not None and len(tuned) >= interrupt_after:
            raise InterruptedError("stopped")
        tuned.extend(prompts)
        return type(tuner).tune(tuner, prompts, global_embeds)

    monkeypatch.setattr(tuner, "tune", counting)
    return tuned


def test_a_finished_bank_reruns_as_done_and_grows_from_itself(
    finished, global_embedding, monkeypatch, tmp_path
):
    tuner, finished_out, _ = finished
    out = tmp_path / finished_out.name
    shutil.copy(finished_out, out)
    shutil.copy(report_path(finished_out), report_path(out))
    before = EmbeddingBank.load(out)
    tuned, said = _counting(tuner, monkeypatch), []
    assert tune_bank(tuner, PROMPTS, global_embedding, out, log=said.append) == out
    assert tuned == [] and "renegx: resuming: 3 prompt(s) of this shard already tuned" in said
    again = EmbeddingBank.load(out)
    assert again.prompts == before.prompts and torch.equal(again.rows.embeds, before.rows.embeds)
    assert json.loads(report_path(out).read_text()) == json.loads(report_path(finished_out).read_text())
    assert not parts_folder(out).exists()
    assert tune_bank(tuner, [*PROMPTS, "a yellow star"], global_embedding, out) == out
    assert tuned == ["a yellow star"]
    assert EmbeddingBank.load(out).prompts[-1] == "a yellow star" and not parts_folder(out).exists()


@pytest.mark.slow
def test_an_interrupted_run_resumes_from_its_parts(
    finished, tiny_backbone, reward, global_embedding, monkeypatch, tmp_path
):
    tuner, finished_out, _ = finished
    out = tmp_path / "bank.safetensors"
    tuned = _counting(tuner, monkeypatch, interrupt_after=1)
    with pytest.raises(InterruptedError):
        tune_bank(tuner, PROMPTS, global_embedding, out)
    assert tuned == ["a red circle", "a blue square"] and not out.exists()
    assert len(list(parts_folder(out).glob("part-*.safetensors"))) == 1
    with pytest.raises(PerPromptError, match=r"bank\.parts holds prompts tuned with other settings"):
        tune_bank(_tuner(tiny_backbone, reward, patience=1), PROMPTS, global_embedding, out)
    tuned = _counting(tuner, monkeypatch)
    assert tune_bank(tuner, PROMPTS, global_embedding, out) == out
    assert tuned == ["a green triangle"] and not parts_folder(out).exists()
    bank, whole = EmbeddingBank.load(out), EmbeddingBank.load(finished_out)
    assert bank.prompts == whole.prompts
    torch.testing.assert_close(bank.rows.embeds, whole.rows.embeds)


def test_parts_of_another_run_are_refused(finished, tiny_backbone, reward, global_embedding):
    _, out, _ = finished
    other = _tuner(tiny_backbone, reward, patience=1)
    with pytest.raises(PerPromptError, match="tuned with other settings"):
        tune_bank(other, PROMPTS, global_embedding, out)


def test_gain_over_global_reports_a_paired_bootstrap(finished):
    tuner, out, report = finished
    bank = EmbeddingBank.load(out)
    on_eval = gain_over_global(tuner, bank, bank.prompts, [0, 1], resamples=200)
    assert on_eval["fresh"] is False and on_eval["prompts"] == 3
    assert on_eval["gain"]["value"] == pytest.approx(report["summary"]["mean_gain"], abs=1e-4)
    fresh = gain_over_global(tuner, bank, bank.prompts, [7, 8], resamples=200)
    assert fresh["fresh"] is True and fresh["judge"] == "clip"
    assert_estimate(fresh["gain"], n=3)
    assert fresh["gain"]["low"] <= fresh["gain"]["value"] <= fresh["gain"]["high"]


# -- the command line ----------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny_per_prompt.yaml"
    path.write_text(
        "model:\n"
        "  model: tiny\n"
        "  reward:\n"
        "    class_path: renegx.rewards.ClipScore\n"
        "    init_args:\n"
        "      model: tiny\n"
        "  num_inference_steps: 3\n"
        "  stop_steps: 2\n"
        "  lr: 0.05\n"
    )
    return path


def _per_prompt_args(config, embedding, prompts, out, *extra):
    return [
        "per-prompt",
        "--config",
        str(config),
        "--embedding",
        str(embedding),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--max-steps",
        "2",
        "--patience",
        "1",
        "--eval-seeds",
        "0",
        *extra,
    ]


@pytest.mark.slow
def test_two_processes_shard_the_prompts_and_merge_once(tmp_path, config, global_embedding):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(
        "\n".join(["a red circle", "a blue square", "a green triangle", "a red circle", "a star"])
    )
    embedding = global_embedding.save(tmp_path / "global.safetensors")
    out = tmp_path / "bank.safetensors"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                str(ROOT / "train.py"),
                *_per_prompt_args(config, embedding, prompts, out, "--shard", shard),
            ],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for shard in ("0/2", "1/2")
    ]
    outputs = [process.communicate(timeout=300) for process in processes]
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr[-2000:]
    assert any("wrote" in stdout for stdout, _ in outputs)
    bank = EmbeddingBank.load(out)
    assert bank.prompts == ["a red circle", "a blue square", "a green triangle", "a star"]
    report = json.loads(report_path(out).read_text())
    assert Counter(r["prompt"] for r in report["per_prompt"]) == Counter(bank.prompts)
    assert not parts_folder(out).exists()  # merged once, by the shard that finished last


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("renegx: error: ")
    return err[-1]


def test_cli_runs_and_refuses_bad_input_in_one_line(tmp_path, config, global_embedding, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    good = global_embedding.save(tmp_path / "global.safetensors")
    out = tmp_path / "bank.safetensors"
    wide = NegativeEmbedding(torch.zeros(1, 77, 768)).save(tmp_path / "wide.safetensors")
    bank = EmbeddingBank(NegativeEmbedding(torch.zeros(2, 77, 32)), ["a", "b"]).save(
        tmp_path / "b.safetensors"
    )
    late = NegativeEmbedding(global_embedding.embeds, metadata={"negative_from": "0.5"})
    late = late.save(tmp_path / "late.safetensors")
    cases = [
        (_per_prompt_args(config, late, prompts, out), "acts from 0.5 of the schedule (its negative_from)"),
        (_per_prompt_args(config, wide, prompts, out), "hidden size 768"),
        (_per_prompt_args(config, bank, prompts, out), "is an embedding bank of 2 prompts"),
        (_per_prompt_args(config, tmp_path / "nope.safetensors", prompts, out), "--embedding file not found"),
        (_per_prompt_args(tmp_path / "nope.yaml", good, prompts, out), "config file not found"),
        (_per_prompt_args(config, good, prompts, out, "--shard", "2/2"), "0 <= i < n"),
        (_per_prompt_args(config, good, prompts, out, "--shard", "one"), "--shard must be i/n"),
        (_per_prompt_args(config, good, prompts, out, "--eval-seeds", "1,x"), "--eval-seeds must be"),
        (_per_prompt_args(config, good, prompts, tmp_path / "bank.bin"), "expected a .safetensors path"),
        (_per_prompt_args(config, good, tmp_path / "none.txt", out), "none.txt"),
    ]
    for args, message in cases:
        assert train_main(args) == 2, args
        assert message in _one_line_error(capsys), args

    other_base = NegativeEmbedding(global_embedding.embeds, metadata={"base_model": "sd15"})
    other = other_base.save(tmp_path / "other.safetensors")
    with pytest.warns(UserWarning) as caught:
        assert train_main(_per_prompt_args(config, other, prompts, out, "--patience", "2")) == 0
    messages = " | ".join(str(w.message) for w in caught)
    assert "base model 'sd15'" in messages and "patience 2 >= max_steps 2" in messages
    assert EmbeddingBank.load(out).prompts == ["a red circle"]
    assert "wrote" in capsys.readouterr().out


def test_per_prompt_tuning_takes_the_recipe_loss(tiny_backbone, reward):
    """`loss: refl` reaches per-prompt tuning: a hinge no reward reaches gives no gradient; `mean` does."""
    prompts = ["a red circle", "a blue square"]
    losses = {}
    for loss, threshold in (("mean", 2.0), ("refl", -1e3), ("refl", 1e3)):
        tuner = PerPromptTuner(
            tiny_backbone,
            reward,
            num_inference_steps=3,
            recipe=StepRecipe(stop_steps=2, loss=loss, refl_threshold=threshold),
            settings=PerPromptSettings(**SETTINGS),
        )
        rows = tiny_backbone.null_embedding().repeat(2, 1, 1).requires_grad_(True)
        value = tuner.training_loss(prompts, rows, 1)
        (grad,) = torch.autograd.grad(value, rows)
        losses[(loss, threshold)] = (value.item(), grad.abs().sum().item())
    assert losses[("refl", -1e3)] == (0.0, 0.0)
    assert losses[("mean", 2.0)][1] > 0
    mean_value, refl_value = losses[("mean", 2.0)][0], losses[("refl", 1e3)][0]
    assert refl_value == pytest.approx(
        2 * 1e3 + mean_value, rel=1e-6
    )  # Σ_prompts (τ − mean R) with τ above R
    assert tuner.describe()["loss"] == "refl"


def test_a_late_recipe_tunes_and_scores_with_the_null_first_and_its_bank_says_so(
    tiny_backbone, reward, global_embedding, tmp_path
):
    """`negative_from` reaches per-prompt tuning: the evaluation's pictures roll out with the null up to the
    window's start, and the bank records the start so that samplers apply it to its rows."""
    from renegx.guidance import rollout_to

    recipe = StepRecipe(stop_steps=2, negative_from=0.5)
    tuner = PerPromptTuner(
        tiny_backbone, reward, num_inference_steps=4, recipe=recipe, settings=PerPromptSettings(**SETTINGS)
    )
    row = torch.randn(
        1, *tiny_backbone.null_embedding().shape[1:], generator=torch.Generator().manual_seed(3)
    )
    scored = tuner.seed_rewards(["a red circle"], row, [0])
    latents = tuner._noise(1, 0)
    embeds, null = tiny_backbone.encode_prompts(["a red circle"]), tiny_backbone.null_embedding()
    x = rollout_to(tiny_backbone.unet, tuner.schedule, latents, null, embeds, 7.5, 2)
    x = rollout_to(tiny_backbone.unet, tuner.schedule, x, row, embeds, 7.5, 4, start_index=2)
    expected = reward(tiny_backbone.decode_to_pixels(x), ["a red circle"])
    torch.testing.assert_close(scored.view(-1), expected, atol=1e-5, rtol=0)
    bank = EmbeddingBank.load(tune_bank(tuner, PROMPTS[:2], global_embedding, tmp_path / "late.safetensors"))
    assert bank.select(["a red circle"]).negative_from == 0.5
