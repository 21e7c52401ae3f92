"""The ComfyUI nodes: Load ReNeg negative and Load ReNeg bank.

Both read from the `reneg` models folder (`ComfyUI/models/reneg/`, or a `reneg:` entry of
`extra_model_paths.yaml`) and hand back a CONDITIONING for the KSampler's negative input, built by
`conditioning.negative_conditioning`, with a text saying what was built. ComfyUI's own modules
(`folder_paths`, `comfy.samplers`) are imported where a node needs them, so that the pack imports without
ComfyUI.
"""

from __future__ import annotations

import os
from typing import Any

import renegx

from .conditioning import Encoder, Negative, negative_conditioning, parts_of
from .errors import PackError
from .window import Schedule

MODELS_FOLDER = "reneg"
EXTENSIONS = (".safetensors", ".bin", ".pt")  # renegx files; official ReNeg tensors (read weights-only)
FALLBACKS = ("global", "error")  # renegx's bank fallbacks (`EmbeddingBank.select`)

STRENGTH = (
    "FLOAT",
    {
        "default": 1.0,
        "min": 0.0,
        "max": 1.0,
        "step": 0.05,
        "tooltip": "1: the learned negative; 0: the empty prompt it was trained against; between: the line "
        "from one to the other.",
    },
)


def register_models_folder() -> None:
    """Register `models/reneg/` with ComfyUI, where the nodes list their files."""
    import folder_paths

    folder_paths.add_model_folder_path(MODELS_FOLDER, os.path.join(folder_paths.models_dir, MODELS_FOLDER))


def _files() -> list[str]:
    import folder_paths

    return [
        name for name in folder_paths.get_filename_list(MODELS_FOLDER) if name.lower().endswith(EXTENSIONS)
    ]


def _path(name: str) -> str:
    import folder_paths

    path = folder_paths.get_full_path(MODELS_FOLDER, name)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(MODELS_FOLDER))
        raise PackError(f"no file {name!r} in the {MODELS_FOLDER} models folder ({folders})")
    return path


def _shared_inputs() -> dict[str, tuple]:
    """The optional inputs both nodes take: the workflow's empty prompt and CLIP, the KSampler's schedule."""
    import comfy.samplers

    same = "as in the KSampler this negative goes to; used only by a negative that acts late"
    return {
        "empty": (
            "CONDITIONING",
            {
                "tooltip": "CLIPTextEncode of an empty text with the workflow's CLIP: the null that "
                "strength < 1 and a late negative's early steps need where the file was trained against "
                "the empty prompt; it also checks that the file fits the workflow's text encoder."
            },
        ),
        "clip": (
            "CLIP",
            {
                "tooltip": "The workflow's CLIP: checks that its text encoder weights are those the file "
                "was trained against (renegx records their fingerprint); others are a warning in info."
            },
        ),
        "strict_encoder": (
            "BOOLEAN",
            {
                "default": False,
                "tooltip": "Refuse a file trained against other text encoder weights than the CLIP's.",
            },
        ),
        "model": ("MODEL", {"tooltip": f"The model, {same}."}),
        "steps": ("INT", {"default": 20, "min": 1, "max": 10000, "tooltip": f"Steps, {same}."}),
        "sampler_name": (comfy.samplers.KSampler.SAMPLERS, {"tooltip": f"Sampler, {same}."}),
        "scheduler": (comfy.samplers.KSampler.SCHEDULERS, {"tooltip": f"Scheduler, {same}."}),
    }


def ksampler_schedule(model: Any, steps: int, sampler_name: str, scheduler: str) -> Schedule:
    """The noise levels ComfyUI's KSampler will call `model` at (its own `comfy.samplers.KSampler`, full
    denoise), and the model's percent → noise level map."""
    import comfy.samplers

    sampler = comfy.samplers.KSampler(
        model, steps=steps, device="cpu", sampler=sampler_name, scheduler=scheduler
    )
    percent_to_sigma = model.get_model_object("model_sampling").percent_to_sigma
    sigmas = [float(sigma) for sigma in sampler.sigmas]
    return Schedule(sigmas, percent_to_sigma, f"{steps} steps, {sampler_name}, {scheduler}")


def _conditioning(
    embedding: Any,
    strength: float,
    empty: list | None = None,
    clip: Any = None,
    strict_encoder: bool = False,
    model: Any = None,
    steps: int = 20,
    sampler_name: str = "euler",
    scheduler: str = "simple",
) -> tuple[list, list[str]]:
    """The negative's CONDITIONING and what was built, from the nodes' inputs (the optional ones as named in
    `_shared_inputs`; the schedule is read only for a negative that acts late)."""
    negative = Negative.of(embedding)
    empty_parts = None if empty is None else parts_of(empty, "the empty input")
    late = embedding.negative_from > 0 and model is not None
    schedule = ksampler_schedule(model, steps, sampler_name, scheduler) if late else None
    encoder = None if clip is None else Encoder.of(clip)
    return negative_conditioning(negative, strength, empty_parts, schedule, encoder, strict_encoder)


class LoadReNegNegative:
    """A renegx negative (`.safetensors`) or an official ReNeg tensor (`.bin`) as the KSampler's negative."""

    CATEGORY = "conditioning/renegx"
    DESCRIPTION = (
        "Loads a learned negative embedding (renegx .safetensors or official ReNeg .bin) from models/reneg "
        "as the CONDITIONING CLIPTextEncode would give for its model family; connect it to the KSampler's "
        "negative."
    )
    FUNCTION = "load"
    RETURN_TYPES = ("CONDITIONING", "STRING")
    RETURN_NAMES = ("negative", "info")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {"required": {"negative": (_files(),), "strength": STRENGTH}, "optional": _shared_inputs()}

    def load(self, negative: str, strength: float, **optional: Any) -> tuple[list, str]:
        path = _path(negative)
        is_bank = renegx.EmbeddingBank.is_bank_file(path)  # a bank file is read as a bank only
        embedding = renegx.EmbeddingBank.load(path).rows if is_bank else renegx.NegativeEmbedding.load(path)
        if embedding.kind == "bank":
            raise PackError(
                f"{negative} is a bank of {len(embedding.embeds)} prompts: load it with Load ReNeg bank"
            )
        conditioning, notes = _conditioning(embedding, strength, **optional)
        return conditioning, "\n".join([f"{negative}: {notes[0]}", *notes[1:]])


class LoadReNegBank:
    """One prompt's row of a renegx bank, or the bank's global fallback, as the KSampler's negative."""

    CATEGORY = "conditioning/renegx"
    DESCRIPTION = (
        "Loads the row a renegx bank holds for the prompt (its exact text), or the bank's global fallback "
        "(fell_back is then true); connect the negative to the KSampler's negative."
    )
    FUNCTION = "load"
    RETURN_TYPES = ("CONDITIONING", "BOOLEAN", "STRING")
    RETURN_NAMES = ("negative", "fell_back", "info")

    @classmethod
    def INPUT_TYPES(cls) -> dict:
        return {
            "required": {
                "bank": (_files(),),
                "prompt": (
                    "STRING",
                    {
                        "multiline": True,
                        "tooltip": "The positive prompt, exactly as the bank's row was tuned for.",
                    },
                ),
                "fallback": (
                    FALLBACKS,
                    {
                        "tooltip": "A prompt the bank does not hold: its global row (global) or an "
                        "error (error)."
                    },
                ),
                "strength": STRENGTH,
            },
            "optional": _shared_inputs(),
        }

    def load(
        self, bank: str, prompt: str, fallback: str, strength: float, **optional: Any
    ) -> tuple[list, bool, str]:
        rows = renegx.EmbeddingBank.load(_path(bank))
        fell_back = prompt not in rows
        embedding = rows.select([prompt], fallback)
        conditioning, notes = _conditioning(embedding, strength, **optional)
        row = f"not in the bank of {len(rows)} prompts: the global fallback" if fell_back else "its own row"
        return (
            conditioning,
            fell_back,
            "\n".join([f"{bank}: {notes[0]}; prompt {prompt!r}: {row}", *notes[1:]]),
        )


NODE_CLASS_MAPPINGS = {"LoadReNegNegative": LoadReNegNegative, "LoadReNegBank": LoadReNegBank}
NODE_DISPLAY_NAME_MAPPINGS = {"LoadReNegNegative": "Load ReNeg negative", "LoadReNegBank": "Load ReNeg bank"}
