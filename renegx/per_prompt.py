"""Per-prompt negative embeddings: ReNeg's Algorithm 1 with honest early stopping, batched and sharded.

Each prompt's embedding starts from the global one and takes at most `max_steps` reward-gradient steps, each
the training step of docs/design.md on that prompt alone (fresh noise, no-grad rollout, one grad step, decode,
reward). After every step the prompt is scored on its **fixed evaluation noise**: full guided DDIM sampling
from the same `eval_seeds` every time (the images `infer.py --seeds` draws), so "better" is not luck of the
draw. The best iterate is kept, and the global embedding is step 0, so a prompt never ends below it on that
evaluation. A step that does not beat the best so far (a tie or a regression) counts toward `patience`.
The evaluation after a step and the next step's no-grad rollout start from the same rows, so they share their
UNet calls (`evaluate_and_roll`) for every prompt that this evaluation cannot stop.

Batched: row i of one `(N, L, D)` tensor is prompt i's embedding; one AdamW steps the tensor and `step_rows`
puts back the rows (value and Adam moments) of prompts that have stopped, which makes it N independent Adams.
Training noise and stop steps are drawn from the run seed per (prompt, step), so a prompt's result does not
depend on which prompts share its batch, its shard or its run.

Sharded and resumable: each finished batch of prompts is written atomically to `<out stem>.parts/`; a rerun
skips prompts already there; whichever process finds every prompt written merges the parts into the bank
`<out>` and its report `<out stem>.report.json` (rewards per step, best and stop step of every prompt).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from renegx.backbone import Backbone
from renegx.bank import EmbeddingBank
from renegx.data import read_prompts
from renegx.embedding import NegativeEmbedding
from renegx.errors import RenegxError
from renegx.files import atomic_write_json, ensure_writable_dir
from renegx.guidance import DDIMSchedule, ddim_schedule, rollout_to
from renegx.rewards import Reward
from renegx.terminal import OneLineArgumentParser
from renegx.training_step import StepRecipe, draw_stop, initial_latents, loss_at_stops

RUN_KEY = "per_prompt_run"
RECORDS_KEY = "per_prompt_records"
ADAM_MOMENTS = ("exp_avg", "exp_avg_sq")


class PerPromptError(RenegxError):
    pass


@dataclass(frozen=True)
class PerPromptSettings:
    """How each prompt is tuned.

    max_steps: N, the most gradient steps per prompt.
    patience: P, stop after P steps in a row that do not beat the best evaluation reward.
    eval_seeds: the fixed noise every step is scored on (the same seeds for every prompt and step).
    batch_prompts: prompts tuned at once. train_samples: noise samples per prompt in each gradient step.
    grad_chunk: prompts whose grad step (one UNet call with grad, the decode and the reward) runs at once;
        the rest wait, which bounds the activation memory (the same gradient, up to float rounding);
        None: the whole batch.
    lr, betas, weight_decay: AdamW's. seed: draws the training noise and stop steps.
    """

    max_steps: int = 10
    patience: int = 3
    eval_seeds: tuple[int, ...] = (0, 1, 2, 3)
    batch_prompts: int = 8
    train_samples: int = 1
    grad_chunk: int | None = None
    lr: float = 5e-3
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("max_steps", "patience", "batch_prompts", "train_samples"):
            if getattr(self, name) < 1:
                raise PerPromptError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.grad_chunk is not None and self.grad_chunk < 1:
            raise PerPromptError(f"grad_chunk must be >= 1, got {self.grad_chunk}")
        if not self.eval_seeds:
            raise PerPromptError("eval_seeds must not be empty")
        if not self.lr > 0:
            raise PerPromptError(f"lr must be > 0, got {self.lr}")
        if self.patience >= self.max_steps:
            warnings.warn(
                f"patience {self.patience} >= max_steps {self.max_steps}: early stopping never triggers, "
                "every prompt takes all steps (the best iterate is still kept)",
                UserWarning,
                stacklevel=3,
            )


@dataclass
class PromptResult:
    """One prompt's run; rewards[s]: mean evaluation reward after s steps (rewards[0]: the global one)."""

    prompt: str
    rewards: list[float]
    best_step: int
    stop_step: int
    stopped_by: str  # "patience" | "max_steps"

    @property
    def gain(self) -> float:
        """Evaluation reward of the kept iterate minus the global embedding's (>= 0 by construction)."""
        return self.rewards[self.best_step] - self.rewards[0]

    def to_json(self) -> dict:
        return {**asdict(self), "gain": self.gain}


def derived_seed(*parts: object) -> int:
    """A 63-bit seed from the parts' text: the same parts give the same seed in any process."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def step_rows(optimizer: torch.optim.Optimizer, rows: torch.Tensor, active: torch.Tensor) -> None:
    """`optimizer.step()` that changes only the rows of `rows` `(N, ...)` flagged in `active` `(N,)` bool.

    Adam(W) is elementwise, so stepping an `(N, L, D)` tensor whose row i only sees prompt i's gradient is N
    independent optimisers; the step count is shared, which is exact because rows only ever stop. Rows of
    stopped prompts get their value and Adam moments put back, so they no longer change at all.
    """
    frozen = ~active.to(rows.device)
    state = optimizer.state[rows]
    kept = {name: state[name][frozen].clone() for name in ADAM_MOMENTS if name in state}
    value = rows.detach()[frozen].clone()
    optimizer.step()
    with torch.no_grad():
        rows[frozen] = value
        for name in ADAM_MOMENTS:
            if name in state:
                state[name][frozen] = kept.get(name, 0.0)


class PerPromptTuner:
    """Tunes a batch of prompts from a global embedding against a frozen backbone and reward.

    Args:
        backbone, reward: the frozen model and the (differentiable) reward, as in training.
        num_inference_steps: T of the training step and of evaluation.
        recipe: the training step's `StepRecipe` (w, K, the loss), as the global run's; each step has one
            stop, shared by the batch, and rolls out on the fine schedule (the evaluation's rollout carries
            it).
        settings: `PerPromptSettings`.
    """

    def __init__(
        self,
        backbone: Backbone,
        reward: Reward,
        *,
        num_inference_steps: int = 30,
        recipe: StepRecipe | None = None,
        settings: PerPromptSettings | None = None,
    ):
        recipe = recipe or StepRecipe()
        self.recipe = replace(recipe, stops_per_rollout=1, rollout_stride=1).check(num_inference_steps)
        self.backbone = backbone
        self.reward = reward
        self.num_inference_steps = num_inference_steps
        self.settings = settings or PerPromptSettings()
        self._schedule = ddim_schedule(backbone.scheduler, num_inference_steps)

    @property
    def device(self) -> torch.device:
        return self.backbone.unet.device

    @property
    def schedule(self) -> DDIMSchedule:
        """The DDIM schedule on the UNet's device (no timestep copied from the host per UNet call)."""
        if self._schedule.device != self.device:
            self._schedule = self._schedule.to(self.device)
        return self._schedule

    def describe(self) -> dict:
        """Everything that decides a prompt's result (not how prompts are batched), JSON-ready."""
        settings = asdict(self.settings)
        del settings["batch_prompts"], settings["grad_chunk"]
        return {
            "base_model": self.backbone.name,
            "clip_skip": self.backbone.clip_skip,
            "reward": self.reward.name,
            "guidance_scale": self.recipe.guidance_scale,
            "num_inference_steps": self.num_inference_steps,
            "stop_steps": self.recipe.stop_steps,
            **self._recipe_beyond_default(),
            **{f"per_prompt_{key}": list(v) if isinstance(v, tuple) else v for key, v in settings.items()},
        }

    def _recipe_beyond_default(self) -> dict:
        """The recipe's loss, decode and dtype settings where they differ from the default (which older
        parts folders were described without)."""
        default = StepRecipe()
        keys = ("loss", "refl_threshold", "decode_size", "frozen_dtype")
        return {
            key: getattr(self.recipe, key)
            for key in keys
            if getattr(self.recipe, key) != getattr(default, key)
        }

    # -- noise ----------------------------------------------------------------------------------------------
    def _noise(self, count: int, seed: int) -> torch.Tensor:
        """`count` initial latents from `Generator().manual_seed(seed)`, as diffusers pipelines draw them."""
        return initial_latents(self.backbone, count, torch.Generator().manual_seed(seed), self.device)

    def stop_index(self, step: int) -> int:
        """The grad step's schedule index at tuning step `step`: uniform over the last K of T."""
        generator = torch.Generator().manual_seed(derived_seed(self.settings.seed, "stop", step))
        return draw_stop(len(self.schedule), self.recipe.stop_steps, generator)

    # -- the two passes -------------------------------------------------------------------------------------
    def _training_batch(self, prompts: list[str], negatives: torch.Tensor, step: int):
        """x_T, negative rows and prompt embeddings of tuning step `step`'s `train_samples` per prompt."""
        samples, seed = self.settings.train_samples, self.settings.seed
        latents = torch.cat([self._noise(samples, derived_seed(seed, prompt, step)) for prompt in prompts])
        prompt_embeds = self.backbone.encode_prompts(prompts).repeat_interleave(samples, 0)
        return latents, negatives.repeat_interleave(samples, 0), prompt_embeds

    def _seed_batch(self, prompts: list[str], negatives: torch.Tensor, seeds: list[int]):
        """x_T from each seed for every prompt, prompt-major, with its negative row and prompt embedding."""
        count, per_prompt = len(prompts), len(seeds)
        latents = torch.cat([self._noise(1, seed) for seed in seeds]).repeat(count, 1, 1, 1)
        negatives = negatives.to(self.device).expand(count, -1, -1).repeat_interleave(per_prompt, 0)
        prompt_embeds = self.backbone.encode_prompts(prompts).repeat_interleave(per_prompt, 0)
        return latents, negatives, prompt_embeds

    def _rollout(self, latents, negatives, prompt_embeds, stop_index: int, start_index: int = 0):
        unet, w = self.backbone.unet, self.recipe.guidance_scale
        return rollout_to(unet, self.schedule, latents, negatives, prompt_embeds, w, stop_index, start_index)

    def rollouts(
        self, prompts: list[str], negatives: torch.Tensor, step: int, ready: Mapping[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """`ready` completed: prompt → its x_t of tuning step `step`, the missing rollouts run in one batch.

        ready: prompt → x_t where `evaluate_and_roll` already ran the rollout. negatives: `(A, L, D)`.
        """
        return self._roll_missing(prompts, self._training_batch(prompts, negatives, step), step, ready)

    def _roll_missing(self, prompts: list[str], batch, step: int, ready: Mapping[str, torch.Tensor]) -> dict:
        latents, negatives, prompt_embeds = batch
        samples, ready = self.settings.train_samples, dict(ready)
        todo = [i for i, prompt in enumerate(prompts) if prompt not in ready]
        if todo:
            rows = torch.tensor([i * samples + j for i in todo for j in range(samples)], device=self.device)
            index = self.stop_index(step)
            ran = self._rollout(latents[rows], negatives.detach()[rows], prompt_embeds[rows], index)
            ready.update(zip([prompts[i] for i in todo], ran.split(samples), strict=True))
        return ready

    def training_loss(
        self,
        prompts: list[str],
        negatives: torch.Tensor,
        step: int,
        ready: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Σ over prompts of the recipe's loss on `train_samples` one-step predictions, so that row i's
        gradient is exactly prompt i's single-prompt gradient. negatives: `(A, L, D)` with grad, one row per
        prompt.

        ready: prompt → its x_t of this step (`rollouts`); the missing ones are rolled out here.
        """
        batch = self._training_batch(prompts, negatives, step)
        ready = self._roll_missing(prompts, batch, step, ready or {})
        _, negatives, prompt_embeds = batch
        index, samples = self.stop_index(step), self.settings.train_samples
        x_t = torch.cat([ready[prompt] for prompt in prompts])
        texts = [p for p in prompts for _ in range(samples)]
        loss, _ = loss_at_stops(
            self.backbone,
            self.reward,
            self.schedule,
            self.recipe,
            texts,
            [x_t],
            [index],
            negatives,
            prompt_embeds,
        )
        # every prompt has `samples` rows, so the batch mean times the prompts is the sum of per-prompt means
        return loss * len(prompts)

    def _judge_final(
        self, final, prompts: list[str], seeds: list[int], reward: Reward | None
    ) -> torch.Tensor:
        images = self.backbone.decode_to_pixels(final)
        scores = (reward or self.reward)(images, [p for p in prompts for _ in seeds])
        return scores.view(len(prompts), len(seeds))

    @torch.no_grad()
    def seed_rewards(
        self, prompts: list[str], negatives: torch.Tensor, seeds: list[int], reward: Reward | None = None
    ) -> torch.Tensor:
        """Rewards `(A, S)` of the final images of full guided sampling from each seed's noise.

        negatives: `(A, L, D)` (or `(1, L, D)` for all); reward: default the tuning reward (e.g. a judge).
        """
        final = self._rollout(*self._seed_batch(prompts, negatives, seeds), len(self.schedule))
        return self._judge_final(final, prompts, seeds, reward)

    @torch.no_grad()
    def evaluate_and_roll(
        self, prompts: list[str], negatives: torch.Tensor, step: int | None = None, along: list[str] = ()
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The mean reward `(A,)` on the fixed evaluation seeds, and, in the same UNet calls, tuning step
        `step`'s no-grad rollouts of the prompts in `along`: prompt → x_t `(train_samples, ...)`.

        Both start from these rows, so the rollouts' latents ride along with the evaluation's up to the step's
        stop index: fewer, fuller calls. The values are those of `seed_rewards` and of `training_loss`'s own
        rollouts, up to float rounding.
        """
        seeds = list(self.settings.eval_seeds)
        latents, rows, prompt_embeds = self._seed_batch(prompts, negatives, seeds)
        start, ready = 0, {}
        if step is not None and along:
            start = self.stop_index(step)
            riding = torch.tensor([prompts.index(p) for p in along], device=self.device)
            extra = self._training_batch(along, negatives.to(self.device)[riding], step)
            both = self._rollout(
                *(torch.cat([a, b]) for a, b in zip((latents, rows, prompt_embeds), extra, strict=True)),
                start,
            )
            latents, x_t = both[: len(latents)], both[len(latents) :]
            ready = dict(zip(along, x_t.split(self.settings.train_samples), strict=True))
        final = self._rollout(latents, rows, prompt_embeds, len(self.schedule), start)
        return self._judge_final(final, prompts, seeds, None).mean(1), ready

    # -- the loop -------------------------------------------------------------------------------------------
    def tune(
        self, prompts: list[str], global_embeds: torch.Tensor
    ) -> tuple[torch.Tensor, list[PromptResult]]:
        """Tune distinct `prompts` at once from `global_embeds` `(1, L, D)`.

        Returns the kept rows `(A, L, D)` float32 on CPU and one `PromptResult` per prompt.
        """
        if len(set(prompts)) != len(prompts):
            raise PerPromptError("tune() takes distinct prompts; map repeats to one row")
        settings, count = self.settings, len(prompts)
        start = global_embeds.detach().to(self.device, torch.float32)
        rows = start.expand(count, -1, -1).clone().requires_grad_(True)
        optimizer = torch.optim.AdamW(
            [rows], lr=settings.lr, betas=settings.betas, weight_decay=settings.weight_decay
        )
        best_step, waited = torch.zeros(count, dtype=torch.long), torch.zeros(count, dtype=torch.long)

        def unstoppable(indices: torch.Tensor) -> list[str]:
            """Prompts the coming evaluation cannot stop (fewer than patience - 1 steps in a row without
            beating their best): their next rollout rides along; the others' run in the training step."""
            return [prompts[i] for i in indices.tolist() if waited[i] < settings.patience - 1]

        first, ready = self.evaluate_and_roll(prompts, rows.detach(), 1, unstoppable(torch.arange(count)))
        first = first.cpu()
        rewards = [[value] for value in first.tolist()]
        best, best_rows = first.clone(), rows.detach().clone()
        stop_step = torch.full((count,), settings.max_steps)
        active = torch.ones(count, dtype=torch.bool)
        for step in range(1, settings.max_steps + 1):
            live = active.nonzero().squeeze(1)
            if len(live) == 0:
                break
            names = [prompts[i] for i in live.tolist()]
            optimizer.zero_grad()
            chunk = settings.grad_chunk or len(names)
            if chunk < len(names):  # the no-grad rollouts in one batch still, the grad steps chunk by chunk
                ready = self.rollouts(names, rows.detach()[live.to(self.device)], step, ready)
            for first in range(0, len(names), chunk):
                part = live[first : first + chunk].to(self.device)
                self.training_loss(names[first : first + chunk], rows[part], step, ready).backward()
            step_rows(optimizer, rows, active)
            next_step = step + 1 if step < settings.max_steps else None
            scores, ready = self.evaluate_and_roll(
                names, rows.detach()[live.to(self.device)], next_step, unstoppable(live)
            )
            scores = scores.cpu()
            for i, value in zip(live.tolist(), scores.tolist(), strict=True):
                rewards[i].append(value)
            improved = scores > best[live]
            better = live[improved]
            best[better], best_step[better] = scores[improved], step
            best_rows[better.to(self.device)] = rows.detach()[better.to(self.device)]
            waited[live] = torch.where(improved, 0, waited[live] + 1)
            done = live[waited[live] >= settings.patience]
            active[done], stop_step[done] = False, step
        results = [
            PromptResult(
                prompt,
                rewards[i],
                int(best_step[i]),
                int(stop_step[i]),
                "max_steps" if active[i] else "patience",
            )
            for i, prompt in enumerate(prompts)
        ]
        return best_rows.cpu(), results


# -- a whole run: shards, parts, resume, merge ---------------------------------------------------------------
def parts_folder(out: Path) -> Path:
    """Where finished batches of prompts wait to be merged into `out`."""
    return out.with_name(out.stem + ".parts")


def report_path(out: Path) -> Path:
    return out.with_name(out.stem + ".report.json")


def _sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor.detach().float().cpu().contiguous().numpy().tobytes()).hexdigest()


def _read_parts(folder: Path, run: str) -> dict[str, tuple[torch.Tensor, dict]]:
    """prompt → (row `(L, D)`, record) over every part of this run; a part of another run is an error."""
    done: dict[str, tuple[torch.Tensor, dict]] = {}
    for path in sorted(folder.glob("part-*.safetensors")):
        part = EmbeddingBank.load(path)
        if part.metadata.get(RUN_KEY) != run:
            raise PerPromptError(
                f"{folder} holds prompts tuned with other settings (another global embedding, config or "
                "per-prompt options); remove it or write the bank elsewhere"
            )
        records = json.loads(part.metadata[RECORDS_KEY])
        for row, (prompt, record) in enumerate(zip(part.prompts, records, strict=True)):
            done.setdefault(prompt, (part.rows.embeds[row], record))
    return done


def _write_part(folder: Path, run: str, rows: torch.Tensor, results: list[PromptResult]) -> Path:
    prompts = [result.prompt for result in results]
    name = hashlib.sha256(json.dumps(prompts).encode("utf-8")).hexdigest()[:16]
    metadata = {RUN_KEY: run, RECORDS_KEY: json.dumps([r.to_json() for r in results], ensure_ascii=False)}
    return EmbeddingBank(NegativeEmbedding(rows, metadata=metadata), prompts).save(
        folder / f"part-{name}.safetensors"
    )


def tune_bank(
    tuner: PerPromptTuner,
    prompts: list[str],
    global_embedding: NegativeEmbedding,
    out: str | os.PathLike,
    *,
    shard: tuple[int, int] = (0, 1),
    with_fallback: bool = True,
    log: Callable[[str], None] = print,
) -> Path | None:
    """Tune this shard's prompts (skipping those already written) and, once every prompt is, merge the bank.

    prompts: may repeat; each distinct prompt is tuned once and every occurrence maps to its row.
    shard: `(i, n)`: this process tunes distinct prompts i, i + n, i + 2n, ...
    Returns the bank path when this call wrote it, None when other shards still have prompts to tune.
    """
    out = Path(out)
    if out.suffix != ".safetensors":
        raise PerPromptError(f"expected a .safetensors path for the bank, got {out}")
    index, count = shard
    if not 0 <= index < count:
        raise PerPromptError(f"shard must be i/n with 0 <= i < n, got {index}/{count}")
    if global_embedding.embeds.shape[0] != 1:
        raise PerPromptError("expected a global embedding of one row, got a bank")
    if isinstance(prompts, str) or not prompts:
        raise PerPromptError("expected a non-empty list of prompts")
    occurrences = Counter(prompts)
    unique = list(occurrences)
    if len(unique) < len(prompts):
        log(f"renegx: {len(prompts) - len(unique)} repeated prompt(s): each distinct prompt is tuned once")
    folder = ensure_writable_dir(parts_folder(out))
    run = hashlib.sha256(
        json.dumps({"global": _sha256(global_embedding.embeds), **tuner.describe()}).encode("utf-8")
    ).hexdigest()

    done = _read_parts(folder, run)
    shard_prompts = unique[index::count]
    mine = [p for p in shard_prompts if p not in done]
    if len(mine) < len(shard_prompts):
        log(f"renegx: resuming: {len(shard_prompts) - len(mine)} prompt(s) of this shard already tuned")
    size = tuner.settings.batch_prompts
    for start in range(0, len(mine), size):
        rows, results = tuner.tune(mine[start : start + size], global_embedding.embeds)
        _write_part(folder, run, rows, results)
        improved = sum(result.best_step > 0 for result in results)
        log(
            f"renegx: tuned {min(start + size, len(mine))}/{len(mine)} prompts of shard {index}/{count} "
            f"({improved}/{len(results)} improved in this batch)"
        )

    done = _read_parts(folder, run)
    missing = [p for p in unique if p not in done]
    if missing:
        log(f"renegx: shard {index}/{count} done; {len(missing)} prompt(s) left to other shards")
        return None
    _merge(tuner, out, unique, occurrences, done, global_embedding, with_fallback, run)
    return out


def _merge(
    tuner: PerPromptTuner,
    out: Path,
    unique: list[str],
    occurrences: Counter,
    done: dict[str, tuple[torch.Tensor, dict]],
    global_embedding: NegativeEmbedding,
    with_fallback: bool,
    run: str,
) -> None:
    """Write the bank (rows in prompt-file order) and its report, both atomically."""
    metadata = {
        **{k: v if isinstance(v, (str, int, float)) else json.dumps(v) for k, v in tuner.describe().items()},
        **tuner.backbone.text_encoder_metadata(),
        "global_sha256": _sha256(global_embedding.embeds),
        "global_train_steps": global_embedding.metadata.get("train_steps", "unknown"),
        "per_prompt_run": run,
    }
    rows = torch.stack([done[p][0] for p in unique])
    fallback = NegativeEmbedding(global_embedding.embeds.detach().cpu()) if with_fallback else None
    EmbeddingBank(NegativeEmbedding(rows, metadata=metadata), unique, fallback).save(out)
    records = [{"row": row, "occurrences": occurrences[p], **done[p][1]} for row, p in enumerate(unique)]
    gains = [record["gain"] for record in records]
    summary = {
        "prompts": len(unique),
        "repeats": sum(occurrences.values()) - len(unique),
        "improved": sum(record["best_step"] > 0 for record in records),
        "mean_gain": sum(gains) / len(gains),
        "mean_best_step": sum(record["best_step"] for record in records) / len(records),
        "mean_stop_step": sum(record["stop_step"] for record in records) / len(records),
    }
    atomic_write_json(
        report_path(out),
        {"bank": out.name, "settings": tuner.describe(), "summary": summary, "per_prompt": records},
    )


# -- measuring a bank ----------------------------------------------------------------------------------------
def paired_bootstrap_ci(
    differences: torch.Tensor, confidence: float = 0.95, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of paired differences `(n,)`, resampling the pairs."""
    generator = torch.Generator().manual_seed(seed)
    picks = torch.randint(len(differences), (resamples, len(differences)), generator=generator)
    means = differences.double()[picks].mean(1)
    tail = (1 - confidence) / 2
    low, high = torch.quantile(means, torch.tensor([tail, 1 - tail], dtype=torch.double)).tolist()
    return low, high


def gain_over_global(
    tuner: PerPromptTuner,
    bank: EmbeddingBank,
    prompts: list[str],
    seeds: list[int],
    judge: Reward | None = None,
    resamples: int = 2000,
) -> dict:
    """Mean per-prompt gain of the bank's rows over its global fallback, judged on `seeds`.

    Per prompt: mean over seeds of judge(row's image) − judge(global's image), the same noise for both; the CI
    is a paired bootstrap over prompts. Use seeds outside the evaluation seeds ("fresh": true) and a judge
    other than the tuning reward to measure more than the selection itself.
    """
    if bank.fallback is None:
        raise PerPromptError("the bank has no global fallback to compare with")
    prompts = list(dict.fromkeys(prompts))
    unknown = bank.unknown(prompts)
    if unknown:
        raise PerPromptError(f"{len(unknown)} prompt(s) are not in the bank, e.g. {unknown[0]!r}")
    judged_bank, judged_global = [], []
    size = tuner.settings.batch_prompts
    for start in range(0, len(prompts), size):
        chunk = prompts[start : start + size]
        judged_bank.append(tuner.seed_rewards(chunk, bank.select(chunk).embeds, seeds, judge).mean(1).cpu())
        judged_global.append(tuner.seed_rewards(chunk, bank.fallback.embeds, seeds, judge).mean(1).cpu())
    with_bank, with_global = torch.cat(judged_bank), torch.cat(judged_global)
    differences = with_bank - with_global
    low, high = paired_bootstrap_ci(differences, resamples=resamples)
    return {
        "judge": (judge or tuner.reward).name,
        "seeds": list(seeds),
        "fresh": not set(seeds) & set(tuner.settings.eval_seeds),
        "prompts": len(prompts),
        "mean_bank": with_bank.mean().item(),
        "mean_global": with_global.mean().item(),
        "mean_gain": differences.mean().item(),
        "ci95": [low, high],
        "win_rate": (differences > 0).double().mean().item(),
    }


# -- the command line: train.py per-prompt -------------------------------------------------------------------
def parse_per_prompt_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="train.py per-prompt",
        description="Tune one negative embedding per prompt, starting from a global one; write a bank.",
    )
    parser.add_argument("--config", required=True, help="the training config (its model: section is used)")
    parser.add_argument("--embedding", required=True, help="the global embedding every prompt starts from")
    parser.add_argument("--prompts", required=True, help="prompt file (.txt, .json, .jsonl, .tsv) or builtin")
    parser.add_argument("--out", required=True, help="the bank to write, e.g. bank.safetensors")
    parser.add_argument("--max-steps", type=int, default=10, help="most gradient steps per prompt (N)")
    parser.add_argument("--patience", type=int, default=3, help="steps without a new best, then stop (P)")
    parser.add_argument("--eval-seeds", default="0,1,2,3", help="comma-separated seeds to score each step on")
    parser.add_argument("--batch-prompts", type=int, default=8, help="prompts tuned at once")
    parser.add_argument("--train-samples", type=int, default=1, help="noise samples per prompt per step")
    parser.add_argument(
        "--grad-chunk", type=int, help="prompts per grad step and decode, bounds memory (default: the batch)"
    )
    parser.add_argument("--lr", type=float, help="default: the config's model.lr")
    parser.add_argument("--seed", type=int, default=0, help="seed of the training noise and stop steps")
    parser.add_argument("--shard", help="i/n: every n-th prompt from the i-th (default: RANK/WORLD_SIZE)")
    parser.add_argument("--no-fallback", action="store_true", help="do not store the global row as fallback")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser.parse_args(argv)


def _int_list(text: str, flag: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise PerPromptError(f"{flag} must be comma-separated integers, got '{text}'") from None
    if not values:
        raise PerPromptError(f"{flag} is empty")
    return values


def _shard(text: str | None) -> tuple[int, int]:
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    parts = text.split("/")
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise PerPromptError(f"--shard must be i/n (e.g. 0/2), got '{text}'")
    return int(parts[0]), int(parts[1])


def _device(name: str) -> torch.device:
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def load_global_embedding(path: str | os.PathLike, backbone: Backbone) -> NegativeEmbedding:
    """The global embedding, checked against the backbone (hidden size, length; base model: a warning)."""
    embedding = NegativeEmbedding.load(path, hidden_size=backbone.hidden_size, seq_len=backbone.max_length)
    if embedding.kind != "global":
        rows = embedding.embeds.shape[0]
        raise PerPromptError(f"{path} is a bank of {rows} rows; expected a global embedding")
    base = embedding.metadata.get("base_model")
    if base is not None and base != backbone.name:
        warnings.warn(
            f"{path} was trained on base model '{base}', tuning on '{backbone.name}' (same hidden size)",
            UserWarning,
            stacklevel=2,
        )
    return embedding


def tune_bank_from_args(args: argparse.Namespace, build_model: Callable[[str], object]) -> Path | None:
    """Run `train.py per-prompt`; `build_model(config)` returns the config's ReNegModule."""
    for flag, value in (("--config", args.config), ("--embedding", args.embedding)):
        if not Path(value).is_file():
            raise PerPromptError(f"{flag} file not found: {value}")
    prompts = read_prompts(args.prompts)
    shard = _shard(args.shard)
    module = build_model(args.config)
    hparams: Mapping = module.hparams
    settings = PerPromptSettings(
        max_steps=args.max_steps,
        patience=args.patience,
        eval_seeds=_int_list(args.eval_seeds, "--eval-seeds"),
        batch_prompts=args.batch_prompts,
        train_samples=args.train_samples,
        grad_chunk=args.grad_chunk,
        lr=hparams["lr"] if args.lr is None else args.lr,
        betas=tuple(hparams["betas"]),
        weight_decay=hparams["weight_decay"],
        seed=args.seed,
    )
    backbone, reward = module.backbone.to(_device(args.device)), module.reward.to(_device(args.device))
    global_embedding = load_global_embedding(args.embedding, backbone)
    tuner = PerPromptTuner(
        backbone,
        reward,
        num_inference_steps=hparams["num_inference_steps"],
        recipe=module.recipe,
        settings=settings,
    )
    written = tune_bank(
        tuner, prompts, global_embedding, args.out, shard=shard, with_fallback=not args.no_fallback
    )
    if written is not None:
        summary = json.loads(report_path(written).read_text())["summary"]
        print(
            f"renegx: wrote {written} ({summary['prompts']} prompts, {summary['improved']} improved on the "
            f"evaluation seeds, mean gain {summary['mean_gain']:+.4g}) and {report_path(written).name}",
            file=sys.stdout,
        )
    return written
