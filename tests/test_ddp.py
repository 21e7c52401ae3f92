"""DDP on CPU (gloo), two processes, through `train.py` as a user runs it.

The run is replayed in this process as one process would do it by hand: each rank's batch with that rank's
noise generator, the two gradients averaged, one AdamW step. The DDP result must equal the replay — which
pins the gradient all-reduce, the per-rank prompts and noise, and a NaN on one rank skipping the update on
both. (`strategy="ddp"` would re-execute pytest in the child rank, hence a subprocess running train.py.)
"""

import json
from pathlib import Path

import pytest
import torch
from ddp_probe import digest
from ddp_run import train_ddp
from safetensors.torch import load_file

from renegx.configs import path_of
from renegx.rewards import ClipScore
from renegx.train.data import ResumableShuffleSampler, split_prompts
from renegx.train.module import ReNegModule, cosine_with_warmup
from renegx.train.step import rank_seed

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [f"a {colour} {shape}" for colour in ("red", "blue", "green") for shape in ("circle", "square")]
PROMPTS += ["a dog", "a house", "a boat", "a tree"]
STEPS, LR, NAN_STEP = 6, 0.005, 2  # rank 1's reward is NaN at step 2 (its third training call)


def test_every_frozen_tensor_is_kept_out_of_ddp():
    module = ReNegModule(reward=ClipScore(model="tiny"), model="tiny", num_inference_steps=2, stop_steps=1)
    ignored = set(module._ddp_params_and_buffers_to_ignore)
    names = {n for n, _ in module.named_parameters()} | {n for n, _ in module.named_buffers()}
    assert ignored == names - {"negative_embeds"}
    assert any(n.startswith("backbone.unet.") for n in ignored) and any(
        n.startswith("reward.") for n in ignored
    )
    assert "null_embeds" in ignored  # buffers too: DDP would otherwise broadcast them every step


def test_ranks_get_disjoint_shares_and_distinct_noise_seeds():
    dataset = list(range(10))
    shares = [list(ResumableShuffleSampler(dataset, num_replicas=2, rank=r, seed=3)) for r in (0, 1)]
    assert sorted(shares[0] + shares[1]) == dataset
    assert len({rank_seed(0, 0), rank_seed(0, 1), rank_seed(1, 0)}) == 3


def _train_ddp(tmp: Path, probe: Path, *extra: str) -> tuple[list[dict], list[torch.Tensor]]:
    """`train.py fit --trainer.devices 2 --trainer.strategy ddp` on CPU, with a probe callback per rank."""
    probe.mkdir(exist_ok=True)
    args = [
        *("fit", "--config", str(path_of("train/tiny"))),
        *("--data.prompts", "prompts.txt", "--data.val_size", "2", "--data.batch_size", "2"),
        *("--model.num_inference_steps", "4", "--model.stop_steps", "2", "--model.lr", str(LR)),
        *("--model.reward.class_path", "ddp_probe.FlakyClipScore"),
        *("--model.reward.init_args.nan_rank", "1", "--model.reward.init_args.nan_calls", f"[{NAN_STEP}]"),
        *("--trainer.devices", "2", "--trainer.strategy", "ddp"),
        *("--trainer.num_sanity_val_steps", "0", "--trainer.enable_progress_bar", "false"),
        *("--trainer.logger.init_args.save_dir", str(tmp / "runs")),
        "--trainer.callbacks+=ddp_probe.RankProbe",
        *extra,
    ]
    done = train_ddp(tmp, probe, args)
    assert done.returncode == 0, done.stderr[-3000:]
    ranks = [json.loads((probe / f"rank{r}.json").read_text()) for r in (0, 1)]
    embeds = [load_file(probe / f"rank{r}.safetensors")["negative_embeds"] for r in (0, 1)]
    return ranks, embeds


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ddp")
    (tmp / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    ranks, embeds = _train_ddp(tmp, tmp / "probe", "--trainer.max_steps", str(STEPS))
    return tmp, ranks, embeds


@pytest.mark.slow
def test_ddp_ranks_end_identical_and_frozen_models_stay_out(ddp_run):
    tmp, ranks, embeds = ddp_run
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["global_step"] for r in ranks] == [STEPS] * 2
    assert torch.equal(embeds[0], embeds[1]) and torch.isfinite(embeds[0]).all()
    # Each rank its own noise and, at every step, its own prompts.
    assert ranks[0]["first_rng"] != ranks[1]["first_rng"]
    for b0, b1 in zip(ranks[0]["batches"], ranks[1]["batches"], strict=True):
        assert not set(b0) & set(b1)
    # Rank 1's NaN reward skipped that update on both ranks.
    assert [r["skipped_steps"] for r in ranks] == [1, 1]
    # Only the negative is synchronised; no frozen weight is broadcast or checkpointed.
    assert ranks[0]["ddp_synced"] == ["module.negative_embeds"]
    assert len(ranks[0]["ddp_ignored"]) > 100 and not any("negative" in n for n in ranks[0]["ddp_ignored"])
    checkpoint = torch.load(
        tmp / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    assert list(checkpoint["state_dict"]) == ["negative_embeds"]
    assert checkpoint["renegx"]["noise_rng"].shape[0] == 2  # both ranks' noise state, for exact resume
    assert (tmp / "runs" / "tiny" / "version_0" / "negative.safetensors").exists()


def _replay(ranks: list[dict], steps: int, **model) -> ReNegModule:
    """The DDP run replayed in one process: each rank's batches with its noise, the two gradients averaged,
    one AdamW step (none at rank 1's NaN step)."""
    module = ReNegModule(reward=ClipScore(model="tiny"), num_inference_steps=4, stop_steps=2, lr=LR, **model)
    train_prompts = split_prompts(PROMPTS, 2, 0)[0]  # the data module's split: val_size 2, seed 0
    generators = [torch.Generator().manual_seed(rank_seed(0, rank)) for rank in (0, 1)]
    optimizer = torch.optim.AdamW([module.negative_embeds], lr=LR, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_with_warmup(s, 0, steps))
    for step in range(steps):
        grads = []
        for rank in (0, 1):
            module._noise_generator = generators[rank]
            prompts = [train_prompts[i] for i in ranks[rank]["batches"][step]]
            module.negative_embeds.grad = None
            loss = module.training_step({"prompts": prompts, "indices": torch.tensor([0])}, step)
            loss.backward()
            grads.append(module.negative_embeds.grad / 2)
        if step != NAN_STEP:  # there rank 1's reward was NaN: no update, on either rank
            module.negative_embeds.grad = grads[0] + grads[1]
            optimizer.step()
        schedule.step()
    return module


@pytest.mark.slow
def test_ddp_equals_averaging_the_ranks_gradients_in_one_process(ddp_run, one_thread):
    _, ranks, embeds = ddp_run
    module = _replay(ranks, STEPS, model="tiny")
    assert torch.equal(embeds[0], module.negative_embeds.detach())  # bitwise: same threads, exact halving
    assert not torch.equal(embeds[0], module.null_embeds)


@pytest.mark.slow
def test_ddp_on_tiny_sd3_equals_averaging_the_ranks_gradients(tmp_path, one_thread):
    """SD3's flow schedule and packed negative (tokens and pooled vector) under DDP: two steps."""
    (tmp_path / "prompts.txt").write_text("\n".join(PROMPTS) + "\n")
    sd3 = {"model": "tiny-sd3", "guidance_scale": 4.5}
    args = [arg for key, value in sd3.items() for arg in (f"--model.{key}", str(value))]
    ranks, embeds = _train_ddp(tmp_path, tmp_path / "probe", "--trainer.max_steps", "2", *args)
    assert torch.equal(embeds[0], embeds[1]) and ranks[0]["ddp_synced"] == ["module.negative_embeds"]
    module = _replay(ranks, 2, **sd3)
    assert torch.equal(embeds[0], module.negative_embeds.detach())
    assert not torch.equal(embeds[0], module.null_embeds)


@pytest.mark.slow
def test_ddp_resume_gives_every_rank_its_own_noise_state_back(ddp_run):
    tmp, _, _ = ddp_run
    checkpoint = torch.load(
        tmp / "runs" / "tiny" / "version_0" / "checkpoints" / "last.ckpt", weights_only=True
    )
    ranks, embeds = _train_ddp(
        tmp, tmp / "resumed", "--trainer.max_steps", str(STEPS + 2), "--ckpt_path", "last"
    )
    saved = checkpoint["renegx"]["noise_rng"]
    assert [r["first_rng"] for r in ranks] == [digest(saved[0]), digest(saved[1])]
    assert [r["global_step"] for r in ranks] == [STEPS + 2] * 2
    assert [r["skipped_steps"] for r in ranks] == [1, 1]  # restored (the 2 new steps have no NaN)
    assert torch.equal(embeds[0], embeds[1]) and torch.isfinite(embeds[0]).all()
