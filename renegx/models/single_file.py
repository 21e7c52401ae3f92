"""Single-file checkpoints: one `.safetensors` in the original Stable Diffusion (LDM) key layout, as model
sites ship fine-tunes, loaded through diffusers' single-file loader with the configuration of a base model.

What a file is comes from its keys, as diffusers' single-file utils read them (`infer_diffusers_model_type`):
SD1.x (`v1`), SD2.x (`v2`) or SDXL (`xl_base`); any other kind (inpainting, refiner, upscaler, SD3, FLUX, ...)
is refused. diffusers tells them apart by keys that only full-size models have and guesses SD1.x when none
is there; renegx then reads the text encoders' keys instead and says so in one line. The configuration (a
diffusers folder or hub id of the base model: layer sizes, scheduler, tokenizer) is the caller's
`config`, else diffusers' default for the kind (the SD1.5, SD2.1 or SDXL-base hub id), which offline loads
only from the local cache. Nothing is unpickled: `.ckpt` files are refused.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from renegx.errors import first_line
from renegx.models.loading import ModelError, offline, pipeline_class, source_of

SUFFIXES = (".safetensors", ".ckpt")
UNET_KEYS, VAE_KEYS = "model.diffusion_model.", "first_stage_model."
SDXL_OPEN_CLIP_G = "conditioner.embedders.1.model."
# The text encoders' key prefixes, by the kind they make a file: SDXL's OpenCLIP-G beside CLIP-L, SD2.x's
# OpenCLIP-H, SD1.x's CLIP-L (the transformers layout).
TEXT_ENCODER_KEYS = {
    "xl_base": (SDXL_OPEN_CLIP_G, "conditioner.embedders.0.transformer."),
    "v2": ("cond_stage_model.model.",),
    "v1": ("cond_stage_model.transformer.",),
}
KINDS = {  # diffusers' model type: (what it is called, its diffusers pipeline)
    "v1": ("SD1.x", "StableDiffusionPipeline"),
    "v2": ("SD2.x", "StableDiffusionPipeline"),
    "xl_base": ("SDXL", "StableDiffusionXLPipeline"),
}
CONFIG_FILES = ["**/*.json", "*.json", "**/*.txt", "*.txt", "**/*.model"]  # what diffusers fetches
# SD's safety checker and its image processor: a single file never holds them.
SD_WITHOUT = {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}
CONFIG_HINT = "pass a diffusers folder of its base model (--model-config; in training model_config)"


@dataclass(frozen=True)
class CheckpointKind:
    """What a single file holds: diffusers' model type (`v1`, `v2`, `xl_base`) and whether diffusers' own keys
    for that type are in the file (`sure`) or the text encoders' keys decided."""

    model_type: str
    sure: bool

    @property
    def label(self) -> str:
        return KINDS[self.model_type][0]

    @property
    def pipeline(self) -> str:
        """The diffusers pipeline class the file loads as."""
        return KINDS[self.model_type][1]

    @property
    def default_config(self) -> str:
        """diffusers' default configuration of this kind: a hub id."""
        from diffusers.loaders.single_file_utils import DIFFUSERS_DEFAULT_PIPELINE_PATHS

        return DIFFUSERS_DEFAULT_PIPELINE_PATHS[self.model_type]["pretrained_model_name_or_path"]


def is_single_file(model: str) -> bool:
    """Whether `model` names a single-file checkpoint (by its suffix) rather than a folder, hub id or name."""
    return Path(model).suffix.lower() in SUFFIXES


def checkpoint_kind(path: str) -> CheckpointKind:
    """The kind of the single file at `path`, from its keys; one-line `ModelError` for anything else."""
    file = Path(path).expanduser()
    if file.suffix.lower() != ".safetensors":
        raise ModelError(f"{path}: only .safetensors checkpoints are read (a {file.suffix} file is a pickle)")
    if not file.is_file():
        raise ModelError(f"single-file checkpoint not found: {path}")
    stat = file.stat()
    return _kind(str(file.resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=16)
def _kind(path: str, mtime_ns: int, size: int) -> CheckpointKind:
    """`checkpoint_kind`, read once per file version (the note of an unsure kind is said once)."""
    shapes = _header(path)
    guessed = _diffusers_model_type(path, shapes)
    if guessed not in KINDS:
        raise ModelError(
            f"{path} is a '{guessed}' checkpoint (as diffusers reads its keys); renegx loads SD1.x, SD2.x "
            "and SDXL text-to-image checkpoints"
        )
    for part, prefix in (("UNet", UNET_KEYS), ("VAE", VAE_KEYS)):
        if not _has(shapes, prefix):
            raise ModelError(
                f"{path} is not a Stable Diffusion checkpoint in the original layout: it has no {part} "
                f"weights ({prefix}*)"
            )
    by_text = next(
        (kind for kind, prefixes in TEXT_ENCODER_KEYS.items() if all(_has(shapes, p) for p in prefixes)), None
    )
    if by_text is None:
        raise ModelError(
            f"{path} has no text encoder weights of SD1.x, SD2.x or SDXL (cond_stage_model.* or "
            "conditioner.embedders.*)"
        )
    sure = _diffusers_key(guessed) in shapes
    if sure and by_text != guessed:
        raise ModelError(
            f"{path} has the keys of an {KINDS[guessed][0]} UNet but the text encoder of {KINDS[by_text][0]}"
        )
    kind = CheckpointKind(by_text, sure)
    if not sure:
        warnings.warn(
            f"{path}: diffusers' single-file keys do not say which Stable Diffusion it is (it would guess "
            f"SD1.x); its text encoders are {kind.label}'s, so it is read as {kind.label}",
            UserWarning,
            stacklevel=2,
        )
    return kind


def _header(path: str) -> dict[str, tuple[int, ...]]:
    """Every tensor's name and shape, from the file's header only."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as reader:
            return {key: tuple(reader.get_slice(key).get_shape()) for key in reader.keys()}
    except (SafetensorError, OSError) as err:
        raise ModelError(f"{path} is not a readable .safetensors file: {first_line(err)}") from None


def _has(shapes: dict, prefix: str) -> bool:
    """Whether any key starts with `prefix`."""
    return any(key.startswith(prefix) for key in shapes)


def _diffusers_model_type(path: str, shapes: dict[str, tuple[int, ...]]) -> str:
    """diffusers' `infer_diffusers_model_type` on the file's keys, given shape-only (meta) tensors."""
    from diffusers.loaders.single_file_utils import infer_diffusers_model_type

    meta = {key: torch.empty(shape, device="meta") for key, shape in shapes.items()}
    try:
        return infer_diffusers_model_type(meta)
    except (KeyError, ValueError, RuntimeError) as err:  # a kind it tells by values or by other keys
        raise ModelError(f"{path} is no checkpoint renegx can load: {first_line(err)}") from None


def _diffusers_key(model_type: str) -> str:
    """The key by which diffusers recognises `model_type` (SD1.x: the last up-block's skip connection)."""
    from diffusers.loaders.single_file_utils import CHECKPOINT_KEY_NAMES

    return CHECKPOINT_KEY_NAMES[model_type]


def config_folder(path: str, kind: CheckpointKind, config: str | None) -> str:
    """The local folder of `config` (a folder or hub id; default: diffusers' for `kind`), checked to be a
    diffusers folder of `kind`'s pipeline."""
    from huggingface_hub import snapshot_download

    name = config or kind.default_config
    folder, _ = source_of(name, what="config")  # a local path must be a folder
    if not Path(folder).is_dir():
        try:
            folder = snapshot_download(name, allow_patterns=CONFIG_FILES, local_files_only=offline())
        except (OSError, ValueError) as err:
            where = "in the local cache (offline)" if offline() else "reachable"
            whose = "" if config else " (diffusers' default)"
            raise ModelError(
                f"{path} is an {kind.label} checkpoint; its config '{name}'{whose} is not {where}: "
                f"{CONFIG_HINT}"
            ) from err
    found = pipeline_class(folder)
    if found != kind.pipeline:
        what = f"a {found} folder" if found else "not a diffusers pipeline folder (no model_index.json)"
        raise ModelError(
            f"config '{name}' is {what}, but {path} is an {kind.label} checkpoint: pass a {kind.pipeline} "
            "folder"
        )
    return folder


def load_single_file(path: str, pipeline: str, config: str | None = None):
    """The diffusers `pipeline` (a class name) of the single file at `path`, float32, with `config`'s layer
    sizes, scheduler and tokenizers; one-line `ModelError` when the file is not such a checkpoint or does not
    match the config."""
    import diffusers
    from diffusers.loaders.single_file_utils import SingleFileComponentError

    kind = checkpoint_kind(path)
    if kind.pipeline != pipeline:
        raise ModelError(f"{path} is an {kind.label} checkpoint, not a {pipeline} one")
    folder = config_folder(path, kind, config)
    given = dict(SD_WITHOUT) if pipeline == "StableDiffusionPipeline" else {}
    try:
        if kind.model_type == "xl_base":
            given["text_encoder_2"] = _sdxl_second_encoder(path, folder)
        pipe = getattr(diffusers, pipeline).from_single_file(
            path, config=folder, local_files_only=True, **given
        )
    except (OSError, ValueError, RuntimeError, KeyError, SingleFileComponentError) as err:
        reason = first_line(err).split(". If you want")[0]  # diffusers' advice to ignore a mismatch
        if "meta tensor" in reason:  # what diffusers says when it moves a weight the file lacks
            reason = "the file lacks weights the config describes"
        raise ModelError(f"{path} does not load with config '{config or folder}': {reason}") from err
    modules = [module for module in pipe.components.values() if isinstance(module, torch.nn.Module)]
    _check_complete(modules, path, config or folder)
    for module in modules:  # a float16 file too: renegx casts the frozen models itself (`Backbone`)
        torch.nn.Module.to(module, torch.float32)  # diffusers' `to` warns of fp32 modules SD has none of
    return pipe


def _sdxl_second_encoder(path: str, folder: str):
    """SDXL's OpenCLIP-G text encoder, converted from its own keys only.

    diffusers' pipeline loader picks each text encoder's keys by matching widths, so two encoders of one
    width (the tiny test SDXL) would both read CLIP-L's; handed only its own keys, the converter reads them.
    """
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from safetensors import safe_open
    from transformers import CLIPTextModelWithProjection

    with safe_open(path, framework="pt") as reader:
        own = {key: reader.get_tensor(key) for key in reader.keys() if key.startswith(SDXL_OPEN_CLIP_G)}
    return create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, own, subfolder="text_encoder_2", config=folder, local_files_only=True
    )


def _check_complete(modules: list[torch.nn.Module], path: str, config: str) -> None:
    """Every weight the config describes came from the file (diffusers leaves those it lacks unallocated)."""
    for module in modules:
        missing = [key for key, tensor in module.state_dict().items() if tensor.device.type == "meta"]
        if missing:
            raise ModelError(
                f"{path} does not match config '{config}': its {type(module).__name__} lacks {len(missing)} "
                f"of the weights the config describes (e.g. {missing[0]})"
            )
