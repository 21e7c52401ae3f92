"""The training-time monitor: learned − null by both toy judges and the ground truth on a fixed training
sample, logged, written and plotted every N steps, without touching what the run trains."""

import json

import lightning as L
import numpy as np
import pytest
import torch
from assertions import assert_estimate
from builders import quiet_trainer
from lightning.pytorch.loggers import Logger
from PIL import Image

import renegx.files
from renegx.evaluate.monitor import MONITOR_FILE, PLOT_FILE, TRUTH_MEASURES, TrainingMonitor, spread_sample
from renegx.evaluate.protocol import mean_delta
from renegx.rewards import ToyPreference
from renegx.train.data import PromptDataModule
from renegx.train.module import ReNegModule

PROMPTS = ["a red circle", "a blue square on a black background", "a green triangle on the left", "a cat"]


class Recorder(Logger):
    """Keeps every `log_metrics` call: (step, metrics)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[int, dict]] = []

    name, version = "recorder", 0

    def log_metrics(self, metrics, step=None):
        self.calls.append((step, dict(metrics)))

    def log_hyperparams(self, *args, **kwargs):
        pass


def _fit(tmp_path, callbacks, steps: int = 2, logger=None) -> ReNegModule:
    """A toy-world run cut down to seconds: DDIM 4, the negative from step 2, `steps` steps of batch 2."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    L.seed_everything(0)
    module = ReNegModule(
        model="toy", reward=ToyPreference(), num_inference_steps=4, stop_steps=1, negative_from=0.5, lr=0.5
    )
    data = PromptDataModule(prompts=str(tmp_path / "prompts.txt"), val_size=0, batch_size=2)
    trainer = quiet_trainer(
        max_steps=steps,
        limit_val_batches=0,
        logger=logger or False,
        callbacks=callbacks,
        default_root_dir=tmp_path,
        enable_checkpointing=False,
    )
    trainer.fit(module, data)
    return module


def test_spread_sample_takes_prompts_evenly_over_the_split():
    assert spread_sample(list("abcdefgh"), 4) == list("aceg")
    assert spread_sample(list("abc"), 8) == list("abc")


@pytest.mark.slow
def test_monitor_logs_every_estimate_with_its_bounds_and_writes_json_and_plot(tmp_path):
    recorder = Recorder()
    monitor = TrainingMonitor(every_n_steps=1, num_prompts=3, seeds=[0, 1], dirpath=str(tmp_path / "run"))
    _fit(tmp_path, [monitor], steps=2, logger=recorder)
    logged = [
        (step, metrics) for step, metrics in recorder.calls if any(k.startswith("monitor/") for k in metrics)
    ]
    assert [step for step, _ in logged] == [0, 1, 2]  # the first step, every step, and none twice at the end
    expected = {
        f"monitor/{name}_minus_null{end}"
        for name in ("toy-pref", "toy-independent", *TRUTH_MEASURES)
        for end in ("", "_low", "_high")
    }
    for _, metrics in logged:
        assert expected <= set(metrics)
        for name in ("toy-pref", "toy-independent", "defective", "adherence"):
            key = f"monitor/{name}_minus_null"
            assert metrics[f"{key}_low"] <= metrics[key] <= metrics[f"{key}_high"]
    # at step 0 the learned negative is the null: the same pictures, no difference
    assert all(value == 0.0 for key, value in logged[0][1].items() if "_minus_null" in key)
    assert logged[-1][1]["monitor/toy-independent_minus_null"] != 0.0  # and then it moves
    written = json.loads((tmp_path / "run" / MONITOR_FILE).read_text())
    assert [r["step"] for r in written["readings"]] == [0, 1, 2]
    assert written["pictures_per_negative"] == 6 and len(written["prompts"]) == 3
    assert set(written["prompts"]) <= set(PROMPTS)
    assert set(written["readings"][-1]["ground_truth"]) == {"null", "learned"}
    for reading in written["readings"]:
        for row in reading["judges"].values():
            assert_estimate(row["learned_minus_null"], n=3)
        for measure in ("defective", "adherence"):
            assert_estimate(reading["ground_truth"]["learned"][f"{measure}_minus_null"], n=3)
    with Image.open(tmp_path / "run" / PLOT_FILE) as plot:
        assert plot.format == "PNG" and plot.width > 600


def test_judges_differences_are_paired_over_the_same_noise():
    """Each picture's learned score is compared with the null's of the same (prompt, noise): a small shift
    shared by every pair is resolved even where pictures differ by far more than it."""
    rng = np.random.default_rng(0)
    prompt_ids = np.repeat(np.arange(16), 2)
    null = rng.normal(0, 1.0, prompt_ids.size)
    learned = null + 0.05 + rng.normal(0, 0.01, prompt_ids.size)
    reading = TrainingMonitor._compare(
        {"scores": {"judge": null}, "truth": None}, {"scores": {"judge": learned}, "truth": None}, prompt_ids
    )
    row = reading["judges"]["judge"]
    paired = mean_delta(learned, null, clusters=prompt_ids)
    expected = {"value": paired.value, "low": paired.low, "high": paired.high, "n": 16}  # prompts resampled
    assert row["learned_minus_null"] == expected
    assert 0.04 < paired.low < 0.05 < paired.high < 0.06
    # unpaired (another order of the null's pictures) the same shift is lost in the spread
    shuffled = mean_delta(learned, rng.permutation(null), clusters=prompt_ids)
    assert shuffled.low < 0 < shuffled.high


def test_files_are_written_atomically_and_a_failed_write_keeps_the_last_one(tmp_path, monkeypatch):
    monitor = TrainingMonitor(num_prompts=2, seeds=[0], dirpath=str(tmp_path / "run"))
    monitor.folder = tmp_path / "run"
    prompt_ids = np.array([0, 1])
    null = {"scores": {"toy-pref": np.array([0.5, 0.6])}, "truth": None}
    learned = {"scores": {"toy-pref": np.array([0.7, 0.6])}, "truth": None}
    monitor.readings.append({"step": 0, **TrainingMonitor._compare(null, learned, prompt_ids)})
    sample = {"prompts": PROMPTS[:2], "texts": PROMPTS[:2]}
    written = []
    real = renegx.files.atomic_path

    def recording(path):
        written.append(path.name)
        return real(path)

    monkeypatch.setattr(renegx.files, "atomic_path", recording)
    monitor._write(sample)
    assert written == [MONITOR_FILE, PLOT_FILE]
    before = (tmp_path / "run" / MONITOR_FILE).read_bytes()
    assert json.loads(before)["readings"][0]["judges"]["toy-pref"]["learned"] == pytest.approx(0.65)
    monitor.readings.append({"step": 9, "not json": object()})
    with pytest.raises(TypeError):
        monitor._write(sample)
    assert (tmp_path / "run" / MONITOR_FILE).read_bytes() == before
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [MONITOR_FILE, PLOT_FILE]


@pytest.mark.slow
def test_a_run_with_the_monitor_trains_the_bitwise_same_negative(tmp_path):
    monitor = TrainingMonitor(every_n_steps=1, num_prompts=4, seeds=[0, 1], dirpath=str(tmp_path / "m"))
    watched = _fit(tmp_path / "with", [monitor], steps=3)
    alone = _fit(tmp_path / "without", [], steps=3)
    assert len(monitor.readings) == 4
    assert not torch.equal(watched.negative_embeds, watched.null_embeds)  # it trained
    assert torch.equal(watched.negative_embeds, alone.negative_embeds)
