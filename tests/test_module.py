"""ReNegModule: what the training step touches, what it learns, what it saves."""

from dataclasses import replace

import pytest
import torch
from assertions import module_images
from builders import quiet_trainer

from renegx.rewards import ClipScore
from renegx.train.module import ReNegModule, TrainingConfigError, cosine_with_warmup
from renegx.train.step import draw_stop, embedding_metrics, initial_latents, null_pull, reward_loss


@pytest.fixture(scope="module")
def module():
    torch.manual_seed(0)
    return ReNegModule(reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=10, stop_steps=5)


def _batch(prompts):
    return {"prompts": prompts, "indices": torch.arange(len(prompts))}


def test_negative_is_the_only_trainable_parameter_and_starts_at_null(module):
    trainable = [name for name, p in module.named_parameters() if p.requires_grad]
    assert trainable == ["negative_embeds"]
    assert module.negative_embeds.shape == (1, 77, module.backbone.hidden_size)
    assert torch.equal(module.negative_embeds.detach(), module.backbone.encode_prompts([""]))


def test_training_step_grads_reach_only_the_negative_and_rollout_keeps_no_graph(module):
    calls = []

    def record(unet, args, kwargs, output):
        embeds = kwargs["encoder_hidden_states"]
        calls.append(
            (torch.is_grad_enabled(), args[0].shape[0], embeds.requires_grad, output.sample.requires_grad)
        )

    handle = module.backbone.unet.register_forward_hook(record, with_kwargs=True)
    try:
        module.negative_embeds.grad = None
        torch.manual_seed(3)
        loss = module.training_step(_batch(["a red circle", "a green square"]), 0)
        loss.backward()
    finally:
        handle.remove()

    assert module.negative_embeds.grad is not None and module.negative_embeds.grad.abs().sum() > 0
    frozen = [p for name, p in module.named_parameters() if name != "negative_embeds"]
    assert frozen and all(p.grad is None for p in frozen)
    graph_calls = [c for c in calls if c[3]]
    # Exactly one UNet call builds a graph: the negative branch of the grad step, on the batch of 2 only.
    assert len(graph_calls) == 1
    grad_enabled, batch, embeds_need_grad, _ = graph_calls[0]
    assert grad_enabled and batch == 2 and embeds_need_grad
    rollout_calls = calls[:-2]
    assert all(batch == 4 and not needs_graph for _, batch, _, needs_graph in rollout_calls)  # cat([n, c])


@pytest.mark.slow
def test_gradient_ascent_raises_the_training_reward():
    """Real optimisation on tiny models: fixed noise, prompts and stop step; the reward must go up."""
    torch.manual_seed(0)
    module = ReNegModule(reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=6, stop_steps=2)
    prompts = ["a red circle", "a blue square", "a green triangle", "a yellow star"]
    latents = torch.randn(
        len(prompts), *module.backbone.latent_shape, generator=torch.Generator().manual_seed(7)
    )
    stop = len(module.schedule) - 1

    def reward():
        return module.reward(module_images(module, prompts, latents, stop), prompts).mean()

    optimizer = torch.optim.AdamW([module.negative_embeds], lr=1e-2)
    with torch.no_grad():
        before = reward().item()
    for _ in range(60):
        optimizer.zero_grad()
        (-reward()).backward()
        optimizer.step()
    with torch.no_grad():
        after = reward().item()
    assert after > before + 0.01, (before, after)


def test_checkpoint_state_is_the_embedding_only(module):
    state = module.state_dict()
    assert list(state) == ["negative_embeds"]
    fresh = ReNegModule(reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=10, stop_steps=5)
    with torch.no_grad():
        fresh.negative_embeds.add_(1.0)
    fresh.load_state_dict(state, strict=False)
    assert torch.equal(fresh.negative_embeds, module.negative_embeds)


def test_stop_index_is_drawn_from_the_last_k_steps(module):
    torch.manual_seed(0)
    drawn = {draw_stop(len(module.schedule), module.hparams.stop_steps) for _ in range(200)}
    assert drawn == set(range(5, 10))


def test_validation_logs_learned_against_null(module):
    logged = {}
    module.log_dict = lambda values, **_: logged.update(values)
    module.validation_step(_batch(["a red circle", "a blue square"]), 0)
    assert set(logged) == {"val/reward", "val/reward_null", "val/reward_gain"}
    assert torch.isclose(
        logged["val/reward_gain"], logged["val/reward"] - logged["val/reward_null"], atol=1e-6
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"guidance_scale": 1.0}, "guidance_scale must be > 1"),
        ({"stop_steps": 31}, "stop_steps must be in [1, num_inference_steps=30]"),
        ({"stop_steps": 0}, "stop_steps must be in"),
        ({"loss": "hinge"}, "unknown loss 'hinge'"),
        ({"rollout_stride": 0}, "rollout_stride must be >= 1"),
        ({"reuse_rollouts": 0}, "reuse_rollouts must be >= 1"),
        ({"stops_per_rollout": 0}, "stops_per_rollout must be >= 1"),
        ({"negative_from": 1.0}, "negative_from must be a fraction in [0, 1), got 1.0"),
        ({"negative_from": 0.75}, "negative_from 0.75 starts the negative after the first grad step"),
        ({"null_pull": -0.1}, "null_pull must be a finite number >= 0, got -0.1"),
        ({"null_pull": float("nan")}, "null_pull must be a finite number >= 0, got nan"),
    ],
)
def test_bad_training_settings_are_refused(kwargs, message):
    with pytest.raises(TrainingConfigError) as err:
        ReNegModule(reward=ClipScore(model="tiny"), **kwargs)
    assert message in str(err.value) and len(str(err.value).splitlines()) == 1


def test_losses_and_schedule():
    rewards = torch.tensor([1.0, 3.0])
    assert reward_loss(rewards, "mean", 2.0).item() == -2.0
    assert reward_loss(rewards, "refl", 2.0).item() == 0.5
    assert cosine_with_warmup(0, 10, 100) == pytest.approx(0.1)
    assert cosine_with_warmup(10, 10, 100) == pytest.approx(1.0)
    assert cosine_with_warmup(100, 10, 100) == pytest.approx(0.0)


def test_the_null_pull_adds_exactly_its_term_and_its_gradient_and_nothing_at_zero():
    torch.manual_seed(0)
    pulled = ReNegModule(
        reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=6, stop_steps=2, null_pull=0.5
    )
    null = pulled.null_embeds.clone()
    delta = 0.3 * torch.randn(null.shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        pulled.negative_embeds.copy_(null + delta)
    prompts = ["a red circle", "a blue square"]
    latents = initial_latents(pulled.backbone, len(prompts), torch.Generator().manual_seed(2), pulled.device)
    stop = len(pulled.schedule) - 1

    def loss_and_grad(weight):
        pulled.recipe = replace(pulled.recipe, null_pull=weight)
        pulled.negative_embeds.grad = None
        loss, rewards = pulled.step_loss(prompts, latents, [stop])
        loss.backward()
        return loss.detach(), rewards.detach(), pulled.negative_embeds.grad.clone()

    plain, rewards, plain_grad = loss_and_grad(0.0)
    assert torch.equal(plain, reward_loss(rewards, "mean", 2.0))  # λ = 0: the paper's loss, bit for bit
    loss, same_rewards, grad = loss_and_grad(0.5)
    assert torch.equal(rewards, same_rewards)
    assert loss - plain == pytest.approx(0.5 * delta.pow(2).mean().item(), rel=1e-5)
    torch.testing.assert_close(grad - plain_grad, 2 * 0.5 * delta / delta.numel(), rtol=1e-4, atol=1e-9)
    assert null_pull(null + delta, null, 0.0).item() == 0.0
    logged = embedding_metrics(pulled.negative_embeds, null + delta, null, pulled.recipe)
    assert logged["train/null_pull"] == pytest.approx(0.5 * logged["train/null_distance"].item())
    assert "train/null_pull" not in embedding_metrics(null, null, null, replace(pulled.recipe, null_pull=0))


def test_v_prediction_model_trains_through_diffusers_v_x0(one_thread):
    """SD2.x: the grad step's x̂0 is `DDIMScheduler.step(...).pred_original_sample` of a v model."""
    from diffusers import DDIMScheduler

    from renegx.guidance import guided_output, rollout_to
    from renegx.models.backbone import decode_latents

    torch.manual_seed(0)
    module = ReNegModule(
        reward=ClipScore(model="tiny"),
        model="tiny",
        prediction_type="v_prediction",
        num_inference_steps=6,
        stop_steps=2,
    )
    assert module.schedule.prediction_type == "v_prediction"
    assert module.export_metadata()["prediction_type"] == "v_prediction"
    backbone, prompts, stop = module.backbone, ["a red circle"], 5
    latents = torch.randn(1, *backbone.latent_shape, generator=torch.Generator().manual_seed(2))
    images = module_images(module, prompts, latents, stop)

    scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
    scheduler.set_timesteps(6)
    negative, prompt_embeds = module.negative_embeds.detach(), backbone.encode_prompts(prompts)
    x_t = rollout_to(backbone.unet, module.schedule, latents, negative, prompt_embeds, 7.5, stop)
    timestep = scheduler.timesteps[stop]
    with torch.no_grad():
        out_n = backbone.unet(x_t, timestep, encoder_hidden_states=negative).sample
        out_c = backbone.unet(x_t, timestep, encoder_hidden_states=prompt_embeds).sample
        x0 = scheduler.step(guided_output(out_n, out_c, 7.5), timestep, x_t).pred_original_sample
        expected = decode_latents(backbone.vae, x0)
    assert torch.allclose(images.detach(), expected, atol=1e-5, rtol=0)
    images.mean().backward()
    assert module.negative_embeds.grad.abs().sum() > 0


def test_a_coarse_rollout_changes_only_the_rollout():
    """`rollout_stride`: x_t from the strided rollout, the grad step at the same stop on the fine schedule."""
    from renegx.guidance import one_step_x0, rollout_to

    fine = ReNegModule(reward=ClipScore(model="tiny"), num_inference_steps=8, stop_steps=2)
    coarse = ReNegModule(
        reward=ClipScore(model="tiny"), num_inference_steps=8, stop_steps=2, rollout_stride=3
    )
    prompts, stop = ["a red circle", "a blue square"], 7
    latents = initial_latents(coarse.backbone, 2, torch.Generator().manual_seed(0), coarse.device)
    backbone, schedule = coarse.backbone, coarse.schedule
    embeds, negative = backbone.encode_prompts(prompts), coarse.negative_embeds
    x_t = rollout_to(backbone.unet, schedule, latents, negative, embeds, 7.5, stop, stride=3)
    x0 = one_step_x0(backbone.unet, schedule, x_t, stop, negative, embeds, 7.5)
    expected = coarse.reward(backbone.decode_to_pixels(x0), prompts)
    _, rewards = coarse.step_loss(prompts, latents, [stop])
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=0)
    _, fine_rewards = fine.step_loss(prompts, latents, [stop])
    assert not torch.allclose(rewards, fine_rewards, atol=1e-6, rtol=0)


def test_a_negative_that_acts_late_rolls_out_with_the_null_first_and_says_so_in_its_file():
    """`negative_from`: the rollout runs the null to the window's start, then the negative; the grad step, the
    pictures the run draws and the exported metadata follow."""
    from renegx.guidance import one_step_x0, rollout_to

    late = ReNegModule(reward=ClipScore(model="tiny"), num_inference_steps=8, stop_steps=2, negative_from=0.5)
    with torch.no_grad():
        late.negative_embeds.add_(
            torch.randn(late.negative_embeds.shape, generator=torch.Generator().manual_seed(1))
        )
    prompts, stop = ["a red circle", "a blue square"], 7
    latents = initial_latents(late.backbone, 2, torch.Generator().manual_seed(0), late.device)
    backbone, schedule, negative = late.backbone, late.schedule, late.negative_embeds
    embeds, null = backbone.encode_prompts(prompts), late.null_embeds
    x_4 = rollout_to(backbone.unet, schedule, latents, null, embeds, 7.5, 4)
    x_t = rollout_to(backbone.unet, schedule, x_4, negative, embeds, 7.5, stop, start_index=4)
    x0 = one_step_x0(backbone.unet, schedule, x_t, stop, negative, embeds, 7.5)
    expected = late.reward(backbone.decode_to_pixels(x0), prompts)
    _, rewards = late.step_loss(prompts, latents, [stop])
    torch.testing.assert_close(rewards, expected, atol=1e-5, rtol=0)
    x_0 = rollout_to(backbone.unet, schedule, x_4, negative, embeds, 7.5, 8, start_index=4)
    torch.testing.assert_close(
        late.sample_images(prompts, negative, [0, 1]).shape, backbone.decode_to_pixels(x_0).shape
    )
    pictures = late.sample_images(prompts[:1], negative, [5])
    start = initial_latents(late.backbone, 1, torch.Generator().manual_seed(5), late.device)
    by_hand = rollout_to(backbone.unet, schedule, start, null, embeds[:1], 7.5, 4)
    by_hand = rollout_to(backbone.unet, schedule, by_hand, negative, embeds[:1], 7.5, 8, start_index=4)
    torch.testing.assert_close(pictures, backbone.decode_to_pixels(by_hand), atol=1e-5, rtol=0)
    assert late.export_metadata()["negative_from"] == "0.5"
    assert "negative_from" not in ReNegModule(reward=ClipScore(model="tiny")).export_metadata()


def _reuse_fit(tmp_path, stop_at: int = 5, ckpt_path=None, reuse_rollouts: int = 3, **settings):
    """A tiny fit of 5 steps with `reuse_rollouts` (and other module `settings`) and a checkpoint after every
    step, stopped after `stop_at` steps (the learning-rate schedule still spans 5); returns (module, rollout
    count)."""
    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    import renegx.train.step as module_file
    from renegx.train.data import PromptDataModule

    torch.manual_seed(0)
    module = ReNegModule(
        reward=ClipScore(model="tiny"),
        num_inference_steps=4,
        stop_steps=2,
        reuse_rollouts=reuse_rollouts,
        **settings,
    )
    tmp_path.mkdir(parents=True, exist_ok=True)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(f"a {c} {s}" for c in ("red", "blue") for s in ("circle", "square", "dog")))
    data = PromptDataModule(prompts=str(prompts), val_size=0, batch_size=2)
    calls, original = [], module_file.rollouts

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    class StopAt(L.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            trainer.should_stop = trainer.global_step >= stop_at

    checkpoints = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=1, save_last=True)
    trainer = quiet_trainer(
        default_root_dir=tmp_path,
        max_steps=5,
        logger=False,
        callbacks=[StopAt(), checkpoints],
        limit_val_batches=0,
    )
    module_file.rollouts = counting
    try:
        trainer.fit(module, data, ckpt_path=ckpt_path)
    finally:
        module_file.rollouts = original
    return module, len(calls)


def test_reused_rollouts_serve_several_steps_and_resume_exactly(tmp_path):
    """`reuse_rollouts: 3`: one rollout per three steps; a run stopped mid-cycle and resumed from its last
    checkpoint ends bitwise where the uninterrupted run ends (the reused x_t are in the checkpoint)."""
    whole, rolled = _reuse_fit(tmp_path / "whole")
    assert rolled == 2  # steps 1 and 4 roll out; 2, 3 and 5 reuse
    _reuse_fit(tmp_path / "cut", stop_at=2)
    resumed, rolled_after = _reuse_fit(tmp_path / "cut", ckpt_path="last")
    assert rolled_after == 1  # step 3 still reuses step 1's x_t from the checkpoint; step 4 rolls out
    assert torch.equal(resumed.negative_embeds, whole.negative_embeds)
    once, _ = _reuse_fit(tmp_path / "once", reuse_rollouts=1)
    assert not torch.equal(once.negative_embeds, whole.negative_embeds)


@pytest.mark.slow
def test_token_space_resumes_exactly_and_refuses_an_output_space_checkpoint(tmp_path):
    """`space: tokens`: a run stopped after 2 of 5 steps and resumed from its checkpoint ends bitwise where
    the uninterrupted run ends; a checkpoint of the other space is refused in one line."""
    tokens = {"space": "tokens", "num_tokens": 4, "reuse_rollouts": 1}
    whole, _ = _reuse_fit(tmp_path / "whole", **tokens)
    _reuse_fit(tmp_path / "cut", stop_at=2, **tokens)
    resumed, _ = _reuse_fit(tmp_path / "cut", ckpt_path="last", **tokens)
    assert torch.equal(resumed.negative_tokens, whole.negative_tokens)
    _reuse_fit(tmp_path / "output", stop_at=1, reuse_rollouts=1)
    with pytest.raises(
        TrainingConfigError, match="holds negative_embeds, but this run learns negative_tokens"
    ):
        _reuse_fit(tmp_path / "output", ckpt_path="last", **tokens)


def test_reused_rollouts_are_refused_across_processes():
    from types import SimpleNamespace

    module = ReNegModule(
        reward=ClipScore(model="tiny"), num_inference_steps=4, stop_steps=2, reuse_rollouts=2
    )
    module._trainer = SimpleNamespace(world_size=2, precision="32-true")
    with pytest.raises(TrainingConfigError, match="reuse_rollouts 2 needs a single process"):
        module.setup("fit")
