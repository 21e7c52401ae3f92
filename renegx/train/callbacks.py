"""The training run's callbacks: what a run writes and shows besides the checkpoints.

`EmbeddingExporter` writes the learned embedding as `negative.safetensors` plus a model card at the end of
fit, and a step-stamped copy beside every checkpoint.

`ImageLogger` shows what the learned negative does to a few fixed prompts, null and learned side by side.
Every `every_n_steps` optimizer steps (and at the end of training) rank 0 samples `num_prompts` validation
prompts from fixed noise — guided DDIM over all T steps, so the final x̂0 — once with the null embedding
`E("")` and once with the current learned negative, under the same noise. Both go through the UNet as one
batch (T calls of batch 4·num_prompts, not 2T of 2·num_prompts) under the trainer's precision (autocast
with `bf16-mixed`), so other ranks wait for T UNet calls, not 2T in float32. The labelled grid (rows: null,
learned; columns: prompt and seed) is written atomically to `<log_dir>/images/x0-step<N>.png` and passed to
every logger that can show images (`log_image`: wandb; `add_image`: TensorBoard), captioned with each
image's reward.
"""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np
import torch

from renegx.errors import RenegxError
from renegx.evaluate.grids import labelled_grid, prompt_seed_label
from renegx.files import atomic_path, atomic_write_text, ensure_writable_dir
from renegx.negatives.embedding import NegativeEmbedding
from renegx.negatives.textual_inversion import TextualInversion, interface_metadata
from renegx.toyworld import SIBLING, TOY

EMBEDDING_FILE = "negative.safetensors"

_CARD = """---
library_name: diffusers
base_model: {base_model}
tags: [negative-embedding, renegx, reneg]
---
# Learned negative embedding

A ReNeg negative embedding in the text-encoder output space of `{base_model}`, trained by renegx
against the `{reward}` reward ({train_steps} steps, guidance scale {guidance_scale},
{scheduler} with {num_inference_steps} steps).
Shape `{shape}`; clip_skip: {clip_skip}.

```python
from diffusers import {scheduler}
{load}
from renegx import NegativeEmbedding

pipe = {pipe}
pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)
negative = NegativeEmbedding.load({path})
prompts = [{prompt}]
images = pipe(prompts, guidance_scale={guidance_scale}, num_inference_steps={num_inference_steps},
              **negative.for_pipeline(pipe, len(prompts))).images
```
"""


_TOKENS_CARD = """
Learned as {count} input-token vectors: `{stem}_ti.safetensors` is the same negative as a textual inversion
(ComfyUI `embedding:{stem}_ti`, AUTOMATIC1111/Forge and InvokeAI by file name in the negative prompt;
diffusers `pipe.load_textual_inversion(...)`, one encoder's file `{stem}_learned_embeds.safetensors`).
Interfaces draw it from the first step, whatever `negative_from` it was trained with.
"""


def export_embedding(module, folder: str | Path, name: str = EMBEDDING_FILE, with_card: bool = True) -> Path:
    """Write the module's current negative (atomically) into `folder`, with a model card `README.md`."""
    folder = ensure_writable_dir(folder)
    metadata = module.export_metadata()
    embeds, pooled = module.backbone.negative_parts(module.learned_negative().detach().float().cpu().clone())
    embedding = NegativeEmbedding(embeds.contiguous(), pooled=pooled, metadata=metadata)
    path = embedding.save(folder / name)
    if module.tokens:  # the vectors themselves, as the textual-inversion files interfaces load
        vectors = [v.detach().float().cpu() for v in module.token_vectors()]
        TextualInversion(vectors, path.stem, metadata=interface_metadata(metadata)).save_beside(path)
    if with_card:
        shape = (
            tuple(embedding.embeds.shape) if pooled is None else (tuple(embeds.shape), tuple(pooled.shape))
        )
        fields = {"pipeline": "StableDiffusionPipeline", "scheduler": "DDIMScheduler", **metadata}
        load, pipe = _pipeline_source(fields["base_model"], fields["pipeline"])
        prompt = "a red circle" if fields["base_model"] in (TOY, SIBLING) else "a photo of a cat"
        where = json.dumps(str(path.resolve()))  # the snippet runs from any folder
        card = _CARD.format(
            shape=shape, path=where, prompt=json.dumps(prompt), load=load, pipe=pipe, **fields
        )
        if module.tokens:
            card += _TOKENS_CARD.format(stem=path.stem, count=module.hparams.num_tokens)
        atomic_write_text(folder / "README.md", card)
    return path


def _pipeline_source(base_model: str, pipeline: str) -> tuple[str, str]:
    """The card's import lines and the expression that loads the model named `base_model`.

    A hub id or a local folder loads through diffusers; the toy world's generator from the folder renegx
    ships; any other built-in family's model (the seeded random test models, `toy-sibling`) exists only as
    renegx builds it.
    """
    from renegx.models import families

    if base_model == TOY:
        return (
            f"from diffusers import {pipeline}\nfrom renegx.toyworld import generator_folder",
            f"{pipeline}.from_pretrained(generator_folder())",
        )
    family = families().get(base_model)
    if family is not None and family.builtin:  # a registered name, not a folder or hub id
        return (
            "from renegx.models import load_backbone",
            f"load_backbone({json.dumps(base_model)}).pipeline()",
        )
    return f"from diffusers import {pipeline}", f"{pipeline}.from_pretrained({json.dumps(base_model)})"


class EmbeddingExporter(L.Callback):
    """Exports `negative.safetensors` at the end of fit and a step-stamped copy beside every checkpoint.

    Args:
        dirpath: where the final file goes; default the run's log directory.
    """

    def __init__(self, dirpath: str | None = None):
        self.dirpath = dirpath
        self.folder: Path | None = None
        self.last_export: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # On every rank: `trainer.log_dir` is a collective (a broadcast from rank 0) under DDP.
        self.folder = Path(self.dirpath or trainer.log_dir or trainer.default_root_dir)
        if trainer.is_global_zero:
            ensure_writable_dir(self.folder)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        callback = trainer.checkpoint_callback
        if trainer.is_global_zero and callback is not None and callback.dirpath:
            export_embedding(
                pl_module,
                callback.dirpath,
                f"negative-step{trainer.global_step:07d}.safetensors",
                with_card=False,
            )

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero:
            self.last_export = export_embedding(pl_module, self.folder)
            print(f"renegx: exported {self.last_export}")


# -- image logging -------------------------------------------------------------------------------------------
KEY = "x0/null_vs_learned"
GRID_SIZE = 128  # pictures smaller than this are enlarged (nearest neighbour) to about this size


class ImageLogger(L.Callback):
    """Logs an x̂0 grid, null vs learned negative from the same noise, every `every_n_steps` steps.

    Args:
        every_n_steps: optimizer steps between grids (0: only at the end of training).
        num_prompts: how many validation prompts (the first ones; training prompts if there is no val set).
        seed: noise seed of the first prompt (prompt i uses `seed + i`), fixed for the whole run.
        dirpath: folder of the PNGs; default `<log_dir>/images`.
    """

    def __init__(
        self, every_n_steps: int = 100, num_prompts: int = 4, seed: int = 0, dirpath: str | None = None
    ):
        if every_n_steps < 0 or num_prompts < 1:
            raise RenegxError(
                f"every_n_steps must be >= 0 and num_prompts >= 1, got {every_n_steps} and {num_prompts}"
            )
        self.every_n_steps = every_n_steps
        self.num_prompts = num_prompts
        self.seed = seed
        self.dirpath = dirpath
        self.folder: Path | None = None
        self._logged_step: int | None = None
        self.last_path: Path | None = None

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # On every rank: `trainer.log_dir` is a collective (a broadcast from rank 0) under DDP.
        self.folder = Path(self.dirpath or Path(trainer.log_dir or trainer.default_root_dir) / "images")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        step = trainer.global_step
        if self.every_n_steps and step > 0 and step % self.every_n_steps == 0:
            self.log_grid(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.log_grid(trainer, pl_module)

    def _prompts(self, trainer: L.Trainer) -> list[str]:
        datamodule = trainer.datamodule
        for name in ("val_dataset", "train_dataset"):
            dataset = getattr(datamodule, name, None)
            if dataset is not None and len(dataset):
                return list(dataset.prompts[: self.num_prompts])
        return ["a photo"]

    def log_grid(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Path | None:
        """Sample, write and log one grid (rank 0 only, once per step); returns the PNG's path."""
        step = trainer.global_step
        if not trainer.is_global_zero or step == self._logged_step:
            return None
        self._logged_step = step
        prompts = self._prompts(trainer)
        seeds = [self.seed + i for i in range(len(prompts))]
        count = len(prompts)
        negatives = torch.cat(
            [
                pl_module.null_embeds.expand(count, -1, -1),
                pl_module.learned_negative().detach().expand(count, -1, -1),
            ]
        )
        with torch.no_grad(), trainer.precision_plugin.forward_context():
            images = pl_module.sample_images(prompts + prompts, negatives, seeds + seeds)
            rewards = pl_module.reward(images, prompts + prompts).tolist()
        grid = labelled_grid(
            list(images.chunk(2)),
            ["null", "learned"],
            [prompt_seed_label(prompt, seed) for prompt, seed in zip(prompts, seeds, strict=True)],
            scale=max(1, GRID_SIZE // images.shape[-1]),
        )
        path = ensure_writable_dir(self.folder) / f"x0-step{step:07d}.png"
        with atomic_path(path) as temporary:
            grid.save(temporary, format="PNG")
        caption = " | ".join(
            f"{prompt!r}: null {rewards[i]:.4g}, learned {rewards[len(prompts) + i]:.4g}"
            for i, prompt in enumerate(prompts)
        )
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key=KEY, images=[grid], step=step, caption=[caption])
            elif hasattr(getattr(logger, "experiment", None), "add_image"):
                logger.experiment.add_image(KEY, np.asarray(grid), step, dataformats="HWC")
        self.last_path = path
        return path
