"""Model families: everything that depends on which model a name denotes, decided in one place.

A `Family` says how its models load (a frozen training `Backbone`, a diffusers pipeline for the samplers),
the shape of its negative (token rows, a pooled vector, an attention mask), its CFG null, its diffusers
pipeline class and its scheduler kind (DDIM or flow). `family_of(name)` resolves a model name: a built-in
name (`tiny`, `toy`, ...) is its family; a local diffusers folder or a hub id is the family whose pipeline
its `model_index.json` names, SD1.x/2.x when it names none; a single-file checkpoint is the family of the
pipeline its keys say (`renegx.models.single_file`), read with a config folder of its base model. Families
register themselves; the modules that do are listed in `FAMILY_MODULES` and imported on the first lookup.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from renegx.errors import did_you_mean
from renegx.models.loading import ModelError, from_pretrained, looks_local, pipeline_class
from renegx.models.single_file import checkpoint_kind, is_single_file, load_single_file

FAMILY_MODULES = (
    "renegx.models.sd",
    "renegx.models.sdxl",
    "renegx.models.sd3",
    "renegx.models.flux",
    "renegx.models.tiny",
    "renegx.toyworld.family",  # the toy world registers its own two generators
)
SCHEDULER_LABELS = {"ddim": "DDIM", "flow": "FlowMatchEuler"}


@dataclass(frozen=True)
class NegativeShape:
    """What a family's negative holds: `(1, L, D)` token rows, and a pooled `(1, P)` and an attention mask
    `(1, L)` where its pipeline takes them (`negative_pooled_prompt_embeds`,
    `negative_prompt_attention_mask`)."""

    pooled: bool = False
    attention_mask: bool = False


class Family:
    """One model family. Subclasses set the attributes and override the loaders they support.

    name: the family's name; a `builtin` family answers to this name only (renegx builds or ships it).
    pipeline: the diffusers pipeline class its models run as (keys the samplers' adapter).
    pipeline_tag: for a folder or hub id, the family whose tag is in its pipeline class name claims it.
    scheduler: "ddim" or "flow". null: the CFG baseline, "empty prompt" (`E("")`) or "zeros".
    sampler_externals: the "auto" captioner and oracle specs of the samplers for this family's models.
    trains: whether `load_backbone` builds a training backbone (from `components` or, for a single file,
        `components_of`, then `backbone`); other families draw with the samplers only.
    """

    name = ""
    builtin = False
    trains = False
    pipeline = "StableDiffusionPipeline"
    pipeline_tag = ""
    scheduler = "ddim"
    negative = NegativeShape()
    null = "empty prompt"
    sampler_externals: dict[str, str] = {}

    @property
    def scheduler_label(self) -> str:
        """The scheduler as the image sidecars name it."""
        return SCHEDULER_LABELS[self.scheduler]

    def load_backbone(
        self,
        model: str,
        clip_skip: int | None = None,
        prediction_type: str | None = None,
        config: str | None = None,
    ):
        """The frozen training `Backbone` of `model` (a name, folder, hub id or single file of this family;
        `config`: the diffusers folder or hub id a single file is read with)."""
        if not self.trains:
            raise ModelError(
                f"'{model}' is a {self.name} model ({self.scheduler} scheduler): training and the diffusers "
                "pipeline draw need an SD1.x/2.x, SDXL or SD3 model; draw it with --sampler"
            )
        if is_single_file(model):  # read with `config` (`family_of` gives no built-in family a file)
            components = self.components_of(load_single_file(model, self.pipeline, config))
        else:
            components = self.components(model)
        return self.backbone(components, model, clip_skip, prediction_type)

    def components(self, model: str):
        """The frozen components of `model` (a folder or hub id; a built-in family builds or reads its
        own), as `backbone` takes them (a family that trains overrides this)."""
        raise NotImplementedError

    def components_of(self, pipe):
        """A loaded pipeline's components, as `backbone` takes them (a family that trains overrides this)."""
        raise NotImplementedError

    def backbone(self, components, name: str, clip_skip: int | None, prediction_type: str | None):
        """The training backbone over `components` (a family that trains overrides this)."""
        raise NotImplementedError

    def load_pipeline(self, model: str, clip_skip: int | None = None, config: str | None = None):
        """The diffusers pipeline the samplers' adapter of this family runs over (SD1.x/2.x's runs over the
        `Backbone` instead)."""
        from diffusers import DiffusionPipeline

        return from_pretrained(DiffusionPipeline, model)

    def __repr__(self) -> str:
        return f"<{self.name} family: {self.pipeline}, {self.scheduler}>"


_FAMILIES: dict[str, Family] = {}
_default: list[Family] = []
_imported: list[str] = []


def register(family: Family, default: bool = False) -> Family:
    """Add `family` (by its name); `default`: the family of folders and hub ids no other family claims."""
    if family.name in _FAMILIES:
        raise ModelError(f"model family '{family.name}' is registered twice")
    _FAMILIES[family.name] = family
    if default:
        _default.append(family)
    return family


def families() -> dict[str, Family]:
    """Every registered family by name."""
    if not _imported:
        for module in FAMILY_MODULES:
            importlib.import_module(module)
        _imported.extend(FAMILY_MODULES)
    return dict(_FAMILIES)


def family_of(model: str, config: str | None = None) -> Family:
    """The family of a model name, local diffusers folder, hub id or single-file checkpoint; `config` (the
    folder a single file is read with) is refused for any other model."""
    if is_single_file(model):
        return family_of_pipeline(checkpoint_kind(model).pipeline)
    if config is not None:
        raise ModelError(f"a model config is for single-file checkpoints (.safetensors): '{model}' is none")
    known = families()
    if model in known and known[model].builtin:
        return known[model]
    if "/" not in model and not looks_local(model) and not Path(model).expanduser().exists():
        # neither a folder nor an `owner/name` hub id: refused at once, not after the hub's retries
        names = sorted(name for name, family in known.items() if family.builtin)
        raise ModelError(
            f"unknown model '{model}'{did_you_mean(model, names)}: give one of {', '.join(names)}, a "
            "diffusers folder, a hub id (owner/name) or a single-file checkpoint"
        )
    return family_of_pipeline(pipeline_class(model))


def family_of_pipeline(class_name: str) -> Family:
    """The family whose tag is in a diffusers pipeline class name; SD1.x/2.x for any other."""
    for family in families().values():
        if not family.builtin and family.pipeline_tag and family.pipeline_tag in class_name:
            return family
    return _default[0]


def load_backbone(
    model: str = "tiny",
    clip_skip: int | None = None,
    prediction_type: str | None = None,
    config: str | None = None,
):
    """The frozen backbone of `model`'s family: a `Backbone` (SD1.x/2.x layout), an `SDXLBackbone` or an
    `SD3Backbone`.

    `prediction_type` overrides the scheduler's (e.g. a tiny v-prediction model for tests, a v-prediction
    fine-tune); `config` is the diffusers folder or hub id a single-file `model` is read with.
    """
    family = family_of(model, config)
    return family.load_backbone(model, clip_skip=clip_skip, prediction_type=prediction_type, config=config)
