"""The toy world: a trained miniature of text-to-image generation shipped in the package (`--model toy`).

Pictures of coloured shapes with web-like defects; a generator in the Stable Diffusion layout
(`StableDiffusionPipeline.from_pretrained(renegx.toyworld.generator_folder())` works); a preference judge (the
training reward), an independent judge, analytic defect meters, an attribute classifier and a captioner.
`python -m renegx.toyworld.build` re-creates every weight from the recipe in `build.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

from renegx.errors import RenegxError
from renegx.toyworld import paths
from renegx.toyworld.scene import HANDCRAFTED_NEGATIVE

TOY = "toy"
SIBLING = "toy-sibling"  # a second generator sharing TOY's text encoder, VAE and tokenizer (transfer target)
FLOW = "toy-flow"  # an SD3-layout generator trained by rectified flow with TOY's text encoder, VAE, tokenizer
TOY_MODELS = (TOY, SIBLING, FLOW)
_REQUIRED = (
    "generator/model_index.json",
    "judges/preference",
    "judges/independent",
    "judges/classifier",
    "judges/captioner",
    "meters.json",
    "recipe.json",
    "prompts_heldout.json",
    "prompts_train.json",
)


class ToyWorldError(RenegxError):
    """The toy world's weights are missing or do not match the recipe."""


def weights_folder(folder: Path | None = None) -> Path:
    """The folder of shipped weights, checked complete; a one-line error says how to rebuild it."""
    folder = Path(folder or paths.WEIGHTS)
    missing = [name for name in _REQUIRED if not (folder / name).exists()]
    if missing:
        raise ToyWorldError(
            f"toy world weights incomplete in {folder} (missing {', '.join(missing)}); "
            "rebuild them with: python -m renegx.toyworld.build"
        )
    return folder


def generator_folder() -> Path:
    return weights_folder() / "generator"


def _optional_part(folder: Path | None, name: str, what: str, stage: str) -> Path:
    """A part of the weights that weights built before it existed lack, with how to build it."""
    part = weights_folder(folder) / name
    if not (part / "config.json").exists():
        raise ToyWorldError(
            f"toy world weights in {part.parent} have no {what} ({name}/); "
            f"build it with: python -m renegx.toyworld.build --stages {stage}"
        )
    return part


def sibling_unet_folder(folder: Path | None = None) -> Path:
    """The second generator's UNet (`toy-sibling`)."""
    return _optional_part(folder, "sibling_unet", "second generator", "sibling")


def flow_transformer_folder(folder: Path | None = None) -> Path:
    """`toy-flow`'s transformer."""
    return _optional_part(folder, "flow_transformer", "flow-matching generator", "flow")


def heldout_prompts() -> list[str]:
    """The 64 held-out toy prompts (never seen by the generator): the evaluation set."""
    return json.loads((weights_folder() / "prompts_heldout.json").read_text())


benchmark_prompts = heldout_prompts


def train_prompts() -> list[str]:
    return json.loads((weights_folder() / "prompts_train.json").read_text())


def meter_thresholds() -> dict[str, float]:
    return json.loads((weights_folder() / "meters.json").read_text())


def recipe_record() -> dict:
    return json.loads((weights_folder() / "recipe.json").read_text())


def load_attribute_net(name: str = "classifier"):
    """The evaluator's attribute classifier ("classifier") or the samplers' captioner ("captioner")."""
    from renegx.toyworld.networks import AttributeNet, load_module

    return load_module(AttributeNet, weights_folder() / "judges" / name)


def toy_tokenizer():
    """The shipped toy generator's tokenizer."""
    from renegx.toyworld.tokenizer import load_tokenizer

    return load_tokenizer(generator_folder() / "tokenizer")


__all__ = [
    "FLOW",
    "HANDCRAFTED_NEGATIVE",
    "SIBLING",
    "TOY",
    "TOY_MODELS",
    "ToyWorldError",
    "benchmark_prompts",
    "flow_transformer_folder",
    "generator_folder",
    "heldout_prompts",
    "load_attribute_net",
    "meter_thresholds",
    "recipe_record",
    "sibling_unet_folder",
    "toy_tokenizer",
    "train_prompts",
    "weights_folder",
]
