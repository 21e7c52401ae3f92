"""The model-family registry: names and folders resolve to one family, whose declarations match what its
loaders build; loading fails in one line; a new family is one registered class."""

import ast
import json
import re
from pathlib import Path

import pytest
import torch
from assertions import assert_one_line_error

from renegx.models import ModelError, families, family_of, family_of_pipeline, load_backbone, registry
from renegx.models.loading import pipeline_class
from renegx.models.sdxl import SDXLBackbone
from renegx.models.tiny import TinyFamily
from renegx.samplers import load_sampling_model
from renegx.samplers.adapters import ADAPTERS
from renegx.tiny import tiny_sd_components

ROOT = Path(__file__).resolve().parents[1]
BUILT_IN = ("tiny", "tiny-sdxl", "tiny-sd3", "tiny-flux", "toy", "toy-sibling")


def _folder(tmp_path, class_name: str) -> str:
    folder = tmp_path / class_name
    folder.mkdir()
    (folder / "model_index.json").write_text(json.dumps({"_class_name": class_name}))
    return str(folder)


def test_every_family_is_registered_once_with_a_known_scheduler_and_an_adapter():
    known = families()
    assert {"sd", "sdxl", "sd3", *BUILT_IN} <= set(known)
    for name, family in known.items():
        assert family.name == name and family.scheduler in ("ddim", "flow")
        assert family.pipeline in ADAPTERS, f"{name}: no sampler adapter for {family.pipeline}"
    with pytest.raises(ModelError, match="registered twice"):
        registry.register(known["tiny"])


@pytest.mark.parametrize("name", BUILT_IN)
def test_a_built_in_name_is_its_own_family(name):
    assert family_of(name).name == name and family_of(name).builtin


@pytest.mark.parametrize(
    ("class_name", "family"),
    [
        ("StableDiffusionPipeline", "sd"),
        ("StableDiffusionXLPipeline", "sdxl"),
        ("StableDiffusionXLImg2ImgPipeline", "sdxl"),
        ("StableDiffusion3Pipeline", "sd3"),
        ("FluxPipeline", "flux"),
        ("SomeOtherPipeline", "sd"),
    ],
)
def test_a_folder_is_the_family_its_model_index_names(tmp_path, class_name, family):
    folder = _folder(tmp_path, class_name)
    assert pipeline_class(folder) == class_name
    assert family_of(folder).name == family_of_pipeline(class_name).name == family


def test_a_folder_without_an_index_is_sd_and_a_plain_unknown_name_is_refused(tmp_path):
    assert family_of(str(tmp_path)).name == "sd"
    with pytest.raises(ModelError, match=r"unknown model 'tiny-sdx' \(did you mean tiny-sdxl\?\)"):
        family_of("tiny-sdx")  # neither a folder nor an owner/name hub id: no hub lookup


def test_declarations_match_what_the_loaders_build():
    with torch.random.fork_rng():
        tiny, tiny_sdxl, tiny_sd3 = (
            load_backbone("tiny"),
            load_backbone("tiny-sdxl"),
            load_backbone("tiny-sd3"),
        )
    assert not isinstance(tiny, SDXLBackbone) and isinstance(tiny_sdxl, SDXLBackbone)
    assert family_of("tiny-sdxl").null == "zeros" and not tiny_sdxl.null_embedding().any()
    assert family_of("tiny").null == "empty prompt" and tiny.null_embedding().any()
    assert family_of("tiny-sd3").null == "empty prompt" and tiny_sd3.null_embedding().any()
    for name, backbone in (("tiny", tiny), ("tiny-sdxl", tiny_sdxl), ("tiny-sd3", tiny_sd3)):
        assert backbone.schedule(2).kind == family_of(name).scheduler
        _, pooled = backbone.negative_parts(backbone.null_embedding())
        assert (pooled is not None) == family_of(name).negative.pooled


@pytest.mark.parametrize("name", ["tiny", "tiny-sdxl"])
def test_the_sampler_adapter_carries_its_family(name):
    with torch.random.fork_rng():
        model = load_sampling_model(name)
    family = family_of(name)
    assert model.spec is family and model.name == name
    assert model.schedule(2).kind == family.scheduler and family.scheduler_label == "DDIM"
    assert (model.null().pooled is not None) == family.negative.pooled


def test_loading_fails_in_one_line(tmp_path):
    assert_one_line_error(
        ModelError, lambda: load_backbone(str(tmp_path / "missing")), "model folder not found"
    )
    assert_one_line_error(ModelError, lambda: load_backbone(str(tmp_path)), "has no 'unet/' subfolder")
    assert_one_line_error(
        ModelError, lambda: load_backbone("renegx-tests/no-such-model"), "download it first or pass a local"
    )
    flux = _folder(tmp_path, "FluxPipeline")
    assert_one_line_error(ModelError, lambda: load_backbone(flux), "draw it with --sampler")


def test_a_new_family_is_one_registered_class(monkeypatch):
    class TinyV(TinyFamily):
        name = "tiny-v"

        def components(self, model):
            return tiny_sd_components(prediction_type="v_prediction")

    monkeypatch.setitem(registry._FAMILIES, "tiny-v", TinyV())
    with torch.random.fork_rng():
        backbone = load_backbone("tiny-v")
        model = load_sampling_model("tiny-v")
    assert backbone.name == "tiny-v" and backbone.prediction_type == "v_prediction"
    assert model.spec.name == "tiny-v" and model.schedule(2).prediction_type == "v_prediction"


def test_the_registry_imports_no_upper_layer():
    for path in (ROOT / "renegx" / "models").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("renegx."):
                # the file format and the text encoder fingerprint it records, below the models
                lower = node.module in ("renegx.negatives.format", "renegx.negatives.fingerprint")
                assert lower or node.module.split(".")[1] in ("models", "errors", "schedules", "tiny"), (
                    path,
                    node.module,
                )


DECIDES_BY_NAME = re.compile(
    r"""(name|model|family)\W{0,3}\s*(==|!=|\bin)\s*\(?["'](tiny|toy|tiny-sdxl|tiny-sd3|tiny-flux|toy-sibling|sd|sdxl|sd3|flux)["']"""
)


def test_nothing_outside_the_registry_decides_by_a_model_name():
    files = [
        *(ROOT / "renegx" / "samplers").glob("*.py"),
        *(ROOT / "renegx" / "evaluate").glob("*.py"),
        ROOT / "renegx" / "cli" / "infer.py",
        ROOT / "renegx" / "models" / "backbone.py",
    ]
    for path in files:
        for number, line in enumerate(path.read_text().splitlines(), 1):
            assert not DECIDES_BY_NAME.search(line), f"{path.name}:{number}: {line.strip()}"
