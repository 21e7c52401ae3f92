"""What a first GPU run depends on, checked on a CPU: no host reads or copies per UNet call, bounded memory
and caches, lockstep decisions across ranks, precisions that keep the embedding float32, validation in
optimizer steps. The meta device stands in for an accelerator: any read of a tensor's value raises there."""

from pathlib import Path
from types import SimpleNamespace
from unittest import mock

import lightning as L
import pytest
import torch
from ddp_run import train_ddp

from bench.meters import AllocatedPeak
from renegx.cli import train_main
from renegx.configs import path_of
from renegx.guidance import ddim_schedule, one_step_x0, rollout_to
from renegx.models import load_backbone
from renegx.rewards import ClipScore, NonFiniteRewardError, Reward
from renegx.rewards.base import deferred_value_checks
from renegx.train.data import PromptDataModule
from renegx.train.guards import poisoned_if_nonfinite
from renegx.train.module import ReNegModule, TrainingConfigError
from renegx.train.per_prompt import PerPromptSettings, PerPromptTuner
from renegx.train.step import StepRecipe

ROOT = Path(__file__).resolve().parents[1]
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _module(**kwargs):
    torch.manual_seed(0)
    options = {"num_inference_steps": 4, "stop_steps": 2, **kwargs}
    return ReNegModule(reward=ClipScore(model="tiny"), model="tiny", **options)


class DeviceUNet(torch.nn.Module):
    """A stand-in UNet that records where each timestep it gets lives."""

    def __init__(self):
        super().__init__()
        self.timestep_devices = []

    def forward(self, latents, timestep, encoder_hidden_states):
        self.timestep_devices.append(timestep.device.type)
        return SimpleNamespace(sample=latents * encoder_hidden_states.mean())


# -- no host sync, no host-to-device copy per UNet call ------------------------------------------------------
def test_guided_steps_take_their_timesteps_from_the_device_and_read_nothing_back(tiny_backbone):
    schedule = ddim_schedule(tiny_backbone.scheduler, 6).to("meta")
    assert {schedule.timesteps.device.type, schedule.alphas_cumprod.device.type} == {"meta"}
    unet, latents = DeviceUNet(), torch.randn(2, 4, 8, 8, device="meta")
    negative, prompts = torch.randn(1, 77, 32, device="meta"), torch.randn(2, 77, 32, device="meta")
    x_t = rollout_to(unet, schedule, latents, negative, prompts, 7.5, 4)
    x0 = one_step_x0(unet, schedule, x_t, 4, negative.requires_grad_(True), prompts, 7.5)
    assert x0.device.type == "meta" and x0.requires_grad
    assert unet.timestep_devices == ["meta"] * 6


def test_schedule_follows_the_module_and_a_training_step_reads_nothing_back_from_the_device():
    module = _module()
    prompts = ["a red circle", "a blue square"]
    module.backbone.encode_prompts(prompts)  # steady state: prompts encoded before, on the training device
    module.reward.encode_text(prompts)
    module.to("meta")
    assert module.schedule.device.type == "meta"
    loss = module.training_step({"prompts": prompts, "indices": torch.arange(2)}, 0)
    loss.backward()
    assert module.negative_embeds.grad.device.type == "meta"


def test_per_prompt_schedule_follows_the_unet():
    backbone = load_backbone("tiny")
    tuner = PerPromptTuner(
        backbone, ClipScore(model="tiny"), num_inference_steps=3, recipe=StepRecipe(stop_steps=2)
    )
    assert tuner.schedule.device.type == "cpu"
    backbone.to("meta")
    assert tuner.schedule.device.type == "meta" and len(tuner.schedule) == 3


def test_sdxl_time_ids_are_built_once_per_size_and_device():
    backbone = load_backbone_sdxl()
    unet, embeds = backbone.unet, backbone.encode_prompts(["a red circle"])
    latents = torch.randn(1, *backbone.latent_shape)
    first = unet(latents, torch.tensor(10), encoder_hidden_states=embeds).sample
    with mock.patch("renegx.models.sdxl.sdxl_time_ids", side_effect=AssertionError("built again")):
        again = unet(
            latents.repeat(2, 1, 1, 1), torch.tensor(10), encoder_hidden_states=embeds.repeat(2, 1, 1)
        )
    torch.testing.assert_close(again.sample[:1], first, atol=1e-4, rtol=1e-4)


def load_backbone_sdxl():
    from renegx.models import load_backbone

    return load_backbone("tiny-sdxl")


class MeanReward(Reward):
    name = "mean"

    def score(self, images, prompts):
        return images.mean((1, 2, 3))


def test_reward_value_checks_are_deferred_only_where_asked():
    reward, prompts = MeanReward(), ["a", "b"]
    bad = torch.full((2, 3, 8, 8), 0.5)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteRewardError, match="1 of 2 images contain NaN"):
        reward(bad, prompts)
    with deferred_value_checks():
        assert torch.isnan(reward(bad, prompts)[1])
        assert reward(torch.rand(2, 3, 8, 8, device="meta"), prompts).device.type == "meta"  # no host read
    with pytest.raises(NonFiniteRewardError):
        reward(bad, prompts)


def test_a_non_finite_reward_poisons_the_gradient_without_changing_a_finite_step():
    parameter = torch.randn(3, requires_grad=True)
    loss = (parameter**2).sum()
    (clean,) = torch.autograd.grad(loss, parameter, retain_graph=True)
    same = poisoned_if_nonfinite(loss, torch.tensor([1.0, 2.0]), parameter)
    assert torch.equal(same, loss)
    assert torch.equal(torch.autograd.grad(same, parameter, retain_graph=True)[0], clean)
    poisoned = poisoned_if_nonfinite(loss, torch.tensor([1.0, float("nan")]), parameter)
    assert torch.isnan(torch.autograd.grad(poisoned, parameter)[0]).all()


# -- bounded memory ------------------------------------------------------------------------------------------
def test_prompt_cache_keeps_the_most_recent_prompts_and_reencodes_the_same_values():
    backbone = load_backbone("tiny")
    backbone.prompt_cache_size = 2
    first = backbone.encode_prompts(["a", "b"])
    backbone.encode_prompts(["c", "a"])  # "b" is the least recently used
    assert list(backbone._prompt_cache) == ["c", "a"]
    assert torch.equal(backbone.encode_prompts(["a", "b"]), first)
    assert len(backbone._prompt_cache) == 2


@pytest.mark.slow
def test_per_prompt_grad_chunks_bound_the_peak_memory_and_keep_the_result(tiny_backbone):
    prompts = ["a red circle", "a blue square", "a green triangle", "a dog"]
    settings = {"max_steps": 1, "patience": 1, "eval_seeds": (0,), "batch_prompts": 4, "lr": 5e-2}
    peaks, rows = {}, {}
    for chunk in (None, 1):
        tuner = PerPromptTuner(
            tiny_backbone,
            ClipScore(model="tiny"),
            num_inference_steps=3,
            recipe=StepRecipe(guidance_scale=7.5, stop_steps=2),
            settings=PerPromptSettings(**settings, grad_chunk=chunk),
        )
        tuner.tune(prompts, tiny_backbone.null_embedding())  # warm: caches filled outside the meter
        peak = AllocatedPeak()
        with peak:
            rows[chunk], _ = tuner.tune(prompts, tiny_backbone.null_embedding())
        peaks[chunk] = peak.peak
    assert peaks[1] < 0.6 * peaks[None], peaks
    torch.testing.assert_close(rows[1], rows[None], atol=1e-4, rtol=0)  # other batch sizes: rounding only


# -- precision and validation settings -----------------------------------------------------------------------
def test_bf16_true_is_refused_in_one_line(tmp_path, capsys):
    args = [
        "fit",
        "--config",
        str(path_of("train/tiny")),
        "--trainer.precision",
        "bf16-true",
    ]
    args += ["--trainer.logger.init_args.save_dir", str(tmp_path)]
    assert train_main(args) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error.startswith("renegx: error: trainer.precision bf16-true is not supported: it turns the")
    assert "no float32 master copy" in error


@pytest.mark.parametrize(
    "precision, why",
    [
        ("16-mixed", "GradScaler's overflow steps"),
        ("16-true", "float16"),
        ("transformer-engine", "use one of"),
    ],
)
def test_other_precisions_without_a_float32_embedding_or_with_their_own_skips_are_refused(precision, why):
    module = _module()
    module._trainer = SimpleNamespace(precision=precision)  # a CPU trainer turns 16-mixed into bf16-mixed
    with pytest.raises(TrainingConfigError, match=f"trainer.precision {precision} is not supported") as error:
        module.setup("fit")
    assert why in str(error.value) and "\n" not in str(error.value)


def _fit(module, tmp_path, **trainer):
    data = PromptDataModule(prompts=str(_prompt_file(tmp_path)), val_size=2, batch_size=1)
    options = {"max_steps": 4, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False}
    options |= {"num_sanity_val_steps": 0, "enable_model_summary": False, "accelerator": "cpu"}
    fit = L.Trainer(default_root_dir=tmp_path, **{**options, **trainer})
    fit.fit(module, data)
    return fit


def _prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    shapes = ("circle", "square", "dog", "house")
    path.write_text("\n".join(f"a {colour} {shape}" for colour in ("red", "blue") for shape in shapes))
    return path


def test_validation_interval_counts_optimizer_steps_and_validation_is_synced(tmp_path):
    module, at_steps = _module(num_inference_steps=2, stop_steps=1, val_every_n_steps=2), []
    module.on_validation_start = lambda: at_steps.append(module.global_step)
    with mock.patch.object(module, "log_dict", wraps=module.log_dict) as log_dict:
        _fit(module, tmp_path, accumulate_grad_batches=3, val_check_interval=1, check_val_every_n_epoch=None)
    assert at_steps == [2, 4]  # every 2 optimizer steps (6 micro-batches), not every micro-batch
    val_calls = [c for c in log_dict.call_args_list if "val/reward" in c.args[0]]
    assert val_calls and all(c.kwargs.get("sync_dist") for c in val_calls)


def test_validation_in_optimizer_steps_needs_counting_across_epochs_and_a_positive_interval():
    with pytest.raises(TrainingConfigError, match="val_every_n_steps must be >= 1, got 0"):
        _module(val_every_n_steps=0)
    module = _module(val_every_n_steps=500)
    module._trainer = SimpleNamespace(check_val_every_n_epoch=1, accumulate_grad_batches=16)
    with pytest.raises(TrainingConfigError, match="needs trainer.check_val_every_n_epoch: null"):
        module.on_train_start()


def test_compile_check_runs_under_the_trainers_precision(tmp_path):
    module, autocast = _module(num_inference_steps=2, stop_steps=1), []
    module._compiled_gradient_checked = False  # as with compile=True, without compiling on a CPU
    original = module.step_loss

    def recording(*args):
        autocast.append(torch.is_autocast_enabled("cpu"))
        return original(*args)

    module.step_loss = recording
    _fit(module, tmp_path, max_steps=1, precision="bf16-mixed", limit_val_batches=0)
    assert autocast[:2] == [True, True]  # eager and compiled gradients, then the training step


@pytest.mark.slow
def test_compile_check_decides_the_same_on_every_rank(tmp_path):
    """Rank 1's compiled gradient disagrees with eager mode's, rank 0's agrees: both ranks must stop at the
    check (before the fix rank 0 went on into the all-reduce and waited there until the timeout)."""
    (tmp_path / "prompts.txt").write_text(_prompt_file(tmp_path).read_text())
    args = [
        *("fit", "--config", str(path_of("train/tiny")), "--data.prompts", "prompts.txt"),
        *("--data.val_size", "2", "--data.batch_size", "1", "--model.num_inference_steps", "2"),
        *("--model.stop_steps", "1", "--trainer.devices", "2", "--trainer.strategy", "ddp"),
        *("--trainer.max_steps", "2", "--trainer.num_sanity_val_steps", "0"),
        *("--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(tmp_path)),
        "--trainer.callbacks+=ddp_run.SplitCompileCheck",
    ]
    done = train_ddp(tmp_path, tmp_path, args)
    assert done.returncode != 0
    assert "compile=True gives a gradient that differs" in done.stderr
    for rank in (0, 1):
        assert "cosine -1.000" in (tmp_path / f"compile-check-rank{rank}.txt").read_text()


# -- on a CUDA device ----------------------------------------------------------------------------------------
@needs_cuda
def test_cuda_training_step_keeps_the_schedule_on_the_device_and_is_finite():
    module = _module(frozen_dtype="bfloat16", gradient_checkpointing=True).to("cuda")
    prompts = ["a red circle", "a blue square"]
    assert module.schedule.device.type == "cuda"
    unet_devices = []
    handle = module.backbone.unet.register_forward_pre_hook(
        lambda _, args: unet_devices.append(args[1].device.type)
    )
    try:
        loss = module.training_step({"prompts": prompts, "indices": torch.arange(2)}, 0)
        loss.backward()
    finally:
        handle.remove()
    assert set(unet_devices) == {"cuda"}
    assert torch.isfinite(module.negative_embeds.grad).all()


@needs_cuda
def test_cuda_per_prompt_chunks_give_the_batched_result():
    backbone = load_backbone("tiny").to("cuda")
    prompts = ["a red circle", "a blue square", "a green triangle"]
    rows = {}
    for chunk in (None, 1):
        settings = PerPromptSettings(max_steps=2, patience=2, eval_seeds=(0,), lr=5e-2, grad_chunk=chunk)
        tuner = PerPromptTuner(
            backbone,
            ClipScore(model="tiny").to("cuda"),
            num_inference_steps=3,
            recipe=StepRecipe(stop_steps=2),
            settings=settings,
        )
        rows[chunk], _ = tuner.tune(prompts, backbone.null_embedding())
    torch.testing.assert_close(rows[1], rows[None], atol=1e-3, rtol=0)
