"""Export callback: write the learned embedding as `negative.safetensors` plus a model card."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L

from renegx.embedding import NegativeEmbedding
from renegx.files import atomic_write_text, ensure_writable_dir

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
from renegx.embedding import NegativeEmbedding

pipe = {pipe}
pipe.scheduler = {scheduler}.from_config(pipe.scheduler.config)
negative = NegativeEmbedding.load("{file}")
prompts = ["a photo of a cat"]
images = pipe(prompts, guidance_scale={guidance_scale}, num_inference_steps={num_inference_steps},
              **negative.for_pipeline(pipe, len(prompts))).images
```
"""


def export_embedding(module, folder: str | Path, name: str = EMBEDDING_FILE, with_card: bool = True) -> Path:
    """Write the module's current negative (atomically) into `folder`, with a model card `README.md`."""
    folder = ensure_writable_dir(folder)
    metadata = module.export_metadata()
    embeds, pooled = module.backbone.negative_parts(module.negative_embeds.detach().float().cpu().clone())
    embedding = NegativeEmbedding(embeds.contiguous(), pooled=pooled, metadata=metadata)
    path = embedding.save(folder / name)
    if with_card:
        shape = (
            tuple(embedding.embeds.shape) if pooled is None else (tuple(embeds.shape), tuple(pooled.shape))
        )
        fields = {"pipeline": "StableDiffusionPipeline", "scheduler": "DDIMScheduler", **metadata}
        load, pipe = _pipeline_source(fields["base_model"], fields["pipeline"])
        card = _CARD.format(shape=shape, file=name, load=load, pipe=pipe, **fields)
        atomic_write_text(folder / "README.md", card)
    return path


def _pipeline_source(base_model: str, pipeline: str) -> tuple[str, str]:
    """The card's import lines and the expression that loads the model named `base_model`.

    A hub id or a local folder loads through diffusers; the toy world's generator from the folder renegx
    ships; any other built-in family's model (the seeded random test models, `toy-sibling`) exists only as
    renegx builds it.
    """
    from renegx.models import families
    from renegx.toyworld import TOY

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
