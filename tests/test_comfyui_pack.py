"""The ComfyUI node pack (integrations/comfyui) without ComfyUI: `folder_paths` and `comfy.samplers`
stand-ins in `sys.modules` (restored after each test), files written by renegx itself (exports of the tiny
models, banks, an official-style `.bin`), and ComfyUI's rules for conditioning and timestep ranges written out
here as the oracle (comfy/samplers.py, comfy/model_sampling.py; docs/comfyui.md). The run inside a real
ComfyUI is integrations/comfyui/check_in_comfyui.py.
"""

from __future__ import annotations

import ast
import importlib.util
import json
import math
import sys
import types
from pathlib import Path

import pytest
import torch

import renegx
from renegx.models import load_backbone
from renegx.models.sdxl import SDXLBackbone, unpack_conditioning
from renegx.rewards import ClipScore
from renegx.samplers.composer import Window
from renegx.tiny.sdxl import tiny_sdxl_components
from renegx.train.callbacks import export_embedding
from renegx.train.module import ReNegModule

ROOT = Path(__file__).resolve().parents[1]
PACK_DIR = ROOT / "integrations" / "comfyui"
PACK = "renegx_comfyui_pack"
SAMPLERS = ["euler", "dpmpp_2m", "heun"]
SCHEDULERS = ["simple", "normal", "sgm_uniform", "karras"]
TINY_CLIP = "clip_text_model/h32/l2/v514"


# -- ComfyUI's pieces this pack touches, written from its source ---------------------------------------------
class DiscreteSampling:
    """`ModelSamplingDiscrete` of SD1.x/2.x/XL: sigmas of the scaled-linear betas at t = 0…999, log-linear
    between them; a percent p is the noise level at t = (1 − p)·999, 0 → above every sigma, 1 → 0."""

    def __init__(self):
        betas = torch.linspace(0.00085**0.5, 0.012**0.5, 1000, dtype=torch.float64) ** 2
        alphas_cumprod = torch.cumprod(1 - betas, 0)
        self.sigmas = (((1 - alphas_cumprod) / alphas_cumprod) ** 0.5).float()
        self.log_sigmas = self.sigmas.log()

    def sigma(self, t: float) -> float:
        t = min(max(t, 0.0), 999.0)
        low, high, w = math.floor(t), math.ceil(t), t - math.floor(t)
        return math.exp((1 - w) * float(self.log_sigmas[low]) + w * float(self.log_sigmas[high]))

    def percent_to_sigma(self, percent: float) -> float:
        if percent <= 0.0:
            return 999999999.9
        if percent >= 1.0:
            return 0.0
        return self.sigma((1.0 - percent) * 999.0)


def comfy_schedule(sampling: DiscreteSampling, scheduler: str, steps: int) -> list[float]:
    """The `T + 1` descending noise levels of ComfyUI's schedulers of those names (the last is 0)."""
    if scheduler == "simple":
        return [float(sampling.sigmas[-(1 + int(i * 1000 / steps))]) for i in range(steps)] + [0.0]
    if scheduler in ("normal", "sgm_uniform"):
        count = steps + 1 if scheduler == "sgm_uniform" else steps
        times = torch.linspace(999, 0, count)[:steps].tolist()
        return [sampling.sigma(t) for t in times] + [0.0]
    low, high, rho = float(sampling.sigmas[0]) ** (1 / 7), float(sampling.sigmas[-1]) ** (1 / 7), 7.0
    ramp = torch.linspace(0, 1, steps, dtype=torch.float64)
    return ((high + ramp * (low - high)) ** rho).tolist() + [0.0]  # karras


class ComfyModel:
    """What the pack reads of a ComfyUI MODEL: `get_model_object("model_sampling")`."""

    def __init__(self):
        self.sampling = DiscreteSampling()

    def get_model_object(self, name: str):
        assert name == "model_sampling"
        return self.sampling


class KSampler:
    """`comfy.samplers.KSampler`'s names and its `sigmas` (full denoise)."""

    SAMPLERS, SCHEDULERS = SAMPLERS, SCHEDULERS

    def __init__(self, model, steps, device, sampler=None, scheduler=None, denoise=None, model_options=None):
        self.sigmas = torch.tensor(comfy_schedule(model.get_model_object("model_sampling"), scheduler, steps))


def schedule(steps: int, scheduler: str = "normal") -> dict:
    """The nodes' schedule inputs as ComfyUI passes them (keywords), with a model."""
    return {"model": ComfyModel(), "steps": steps, "sampler_name": "euler", "scheduler": scheduler}


def entries_at(conditioning: list, sigma: float, sampling: DiscreteSampling) -> list[int]:
    """Which entries take part in a model call at noise level `sigma` (comfy/samplers.py: each percent turned
    into a noise level, then an entry is skipped above its start's or below its end's)."""
    active = []
    for index, (_cond, options) in enumerate(conditioning):
        if "start_percent" in options and sigma > sampling.percent_to_sigma(options["start_percent"]):
            continue
        if "end_percent" in options and sigma < sampling.percent_to_sigma(options["end_percent"]):
            continue
        active.append(index)
    return active


# -- the pack, imported as ComfyUI would, with stand-ins -----------------------------------------------------
@pytest.fixture
def models_dir(tmp_path) -> Path:
    return tmp_path / "models"


@pytest.fixture
def pack(models_dir, monkeypatch):
    """The pack imported fresh with a `folder_paths` stand-in (no `comfy`), then `comfy.samplers` added for
    the nodes; every module it added to `sys.modules` is removed after the test."""
    folders: dict[str, list[str]] = {}
    folder_paths = types.SimpleNamespace(
        models_dir=str(models_dir),
        add_model_folder_path=lambda name, path: folders.setdefault(name, []).append(path),
        get_folder_paths=lambda name: list(folders[name]),
        get_filename_list=lambda name: sorted(p.name for f in folders[name] for p in Path(f).iterdir()),
        get_full_path=lambda name, file: next(
            (str(Path(f) / file) for f in folders[name] if (Path(f) / file).is_file()), None
        ),
    )
    before = set(sys.modules)
    monkeypatch.setitem(sys.modules, "folder_paths", folder_paths)
    for name in ("comfy", "comfy.samplers"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    spec = importlib.util.spec_from_file_location(PACK, PACK_DIR / "__init__.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    try:
        spec.loader.exec_module(module)
        assert "comfy" not in sys.modules, "the pack imported ComfyUI's comfy at import time"
        module.folders = folders
        comfy = types.ModuleType("comfy")
        comfy.samplers = types.SimpleNamespace(KSampler=KSampler)
        monkeypatch.setitem(sys.modules, "comfy", comfy)
        monkeypatch.setitem(sys.modules, "comfy.samplers", comfy.samplers)
        (models_dir / "reneg").mkdir(parents=True)
        yield module
    finally:
        for name in set(sys.modules) - before:
            if name == PACK or name.startswith(PACK + "."):
                del sys.modules[name]


@pytest.fixture
def tiny_families(pack, monkeypatch):
    """The tiny models as families declared as the real ones are: `tiny` like SD1.x, `tiny-sdxl` like SDXL."""
    families = sys.modules[f"{PACK}.families"]
    tiny = families.Family("tiny", 32, None, 77, families.EMPTY, TINY_CLIP)
    tiny_sdxl = families.Family("tiny-sdxl", 64, 32, 77, families.ZEROS, f"{TINY_CLIP}+{TINY_CLIP}")
    monkeypatch.setattr(families, "FAMILIES", (*families.FAMILIES, tiny, tiny_sdxl))


def _module(model="tiny", **kwargs) -> ReNegModule:
    """A tiny training module whose learned negative is moved off its start, as training would."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        module = ReNegModule(
            reward=ClipScore(model="tiny"), model=model, num_inference_steps=8, stop_steps=2, **kwargs
        )
        with torch.no_grad():
            module.negative_embeds.add_(torch.randn_like(module.negative_embeds))
    return module


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    """Files exported by renegx's own callback code from tiny modules: SD1-like and SDXL-like, at every step
    and acting late, and an SDXL one trained against E("") (force_zeros_for_empty_prompt off)."""
    folder = tmp_path_factory.mktemp("exports")
    with torch.random.fork_rng():
        no_zeros = SDXLBackbone(tiny_sdxl_components(), "tiny-sdxl", force_zeros_for_empty_prompt=False)
    modules = {
        "tiny": _module(),
        "tiny-late": _module(negative_from=0.5),
        "tiny-sdxl": _module("tiny-sdxl"),
        "tiny-sdxl-late": _module("tiny-sdxl", negative_from=0.5),
        "tiny-sdxl-empty": _module(no_zeros),
    }
    return {
        name: export_embedding(module, folder, f"{name}.safetensors", with_card=False)
        for name, module in modules.items()
    }


@pytest.fixture(scope="module")
def empties() -> dict[str, list]:
    """What ComfyUI's CLIPTextEncode returns for "" with each tiny text encoder: `[[E(""), {pooled_output}]]`
    (SD1.x-like: CLIP's pooled vector, which its models never read; SDXL-like: CLIP-G's projection)."""
    with torch.random.fork_rng():
        tiny, tiny_sdxl = load_backbone("tiny"), load_backbone("tiny-sdxl")
    with torch.no_grad():
        tokens = tiny.tokenizer([""], padding="max_length", max_length=77, return_tensors="pt").input_ids
        pooled = tiny.text_encoder(tokens).pooler_output
        embeds_xl, pooled_xl = unpack_conditioning(tiny_sdxl.encode_prompts([""]), tiny_sdxl.pooled_size)
    return {
        "tiny": [[tiny.encode_prompts([""]).clone(), {"pooled_output": pooled}]],
        "tiny-sdxl": [[embeds_xl.clone(), {"pooled_output": pooled_xl.clone()}]],
    }


def _install(models_dir: Path, source: Path, name: str | None = None) -> str:
    target = models_dir / "reneg" / (name or source.name)
    target.write_bytes(source.read_bytes())
    return target.name


def _save(models_dir: Path, name: str, embeds, pooled=None, metadata=None) -> str:
    renegx.NegativeEmbedding(embeds, pooled=pooled, metadata=metadata or {}).save(models_dir / "reneg" / name)
    return name


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# -- the pack ------------------------------------------------------------------------------------------------
def test_the_pack_registers_its_folder_and_two_nodes(pack, models_dir):
    assert pack.folders == {"reneg": [str(models_dir / "reneg")]}
    assert set(pack.NODE_CLASS_MAPPINGS) == {"LoadReNegNegative", "LoadReNegBank"}
    assert pack.NODE_DISPLAY_NAME_MAPPINGS == {
        "LoadReNegNegative": "Load ReNeg negative",
        "LoadReNegBank": "Load ReNeg bank",
    }
    for name in ("a.safetensors", "b.bin", "c.pt", "notes.txt"):
        (models_dir / "reneg" / name).write_bytes(b"")
    negative = pack.NODE_CLASS_MAPPINGS["LoadReNegNegative"]
    inputs = negative.INPUT_TYPES()
    assert inputs["required"]["negative"][0] == ["a.safetensors", "b.bin", "c.pt"]
    assert set(inputs["optional"]) == {
        "empty",
        "clip",
        "strict_encoder",
        "model",
        "steps",
        "sampler_name",
        "scheduler",
    }
    assert inputs["optional"]["scheduler"][0] == SCHEDULERS
    assert negative.RETURN_TYPES == ("CONDITIONING", "STRING")
    assert pack.NODE_CLASS_MAPPINGS["LoadReNegBank"].RETURN_TYPES == ("CONDITIONING", "BOOLEAN", "STRING")


def test_the_pack_reads_renegx_through_its_top_level_only():
    """Integrations name `renegx.NegativeEmbedding` and the like, never renegx's modules, which may move."""
    for path in PACK_DIR.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert not (node.module or "").startswith("renegx"), f"{path.name}: from {node.module} import"
            if isinstance(node, ast.Import):
                assert all(a.name == "renegx" or not a.name.startswith("renegx.") for a in node.names), (
                    path.name
                )


def test_the_empty_input_is_one_encoded_text(pack, models_dir):
    name = _save(models_dir, "sd15.safetensors", _randn(1, 77, 768))
    two = [[_randn(1, 77, 768), {}], [_randn(1, 77, 768), {}]]
    with pytest.raises(pack.errors.PackError, match="expected the empty input to be one encoded text"):
        pack.nodes.LoadReNegNegative().load(name, 1.0, empty=two)


def test_pyproject_has_what_the_comfy_registry_reads():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    config = tomllib.loads((PACK_DIR / "pyproject.toml").read_text())
    project, comfy = config["project"], config["tool"]["comfy"]
    assert project["name"] and project["version"].count(".") == 2 and project["license"]
    assert any(dependency.startswith("renegx") for dependency in project["dependencies"])
    assert comfy["PublisherId"] and comfy["DisplayName"] and comfy["Icon"]


@pytest.mark.parametrize(
    "family, embeds, pooled",
    [
        ("SD1.x", (1, 77, 768), None),
        ("SD2.x", (1, 77, 1024), None),
        ("SDXL", (1, 77, 2048), (1, 1280)),
        ("SD3", (1, 333, 4096), (1, 2048)),
    ],
)
def test_each_family_comes_as_clip_text_encode_hands_it_to_the_sampler(
    pack, models_dir, family, embeds, pooled
):
    """One `[cond, options]` entry: the file's rows as float32, `pooled_output` where the family reads one."""
    tensors = {
        "embeds": _randn(*embeds).half(),
        "pooled": None if pooled is None else _randn(*pooled, seed=1),
    }
    name = _save(models_dir, "negative.safetensors", tensors["embeds"], tensors["pooled"])
    conditioning, info = pack.nodes.LoadReNegNegative().load(name, 1.0)
    assert len(conditioning) == 1 and len(conditioning[0]) == 2
    cond, options = conditioning[0]
    assert cond.dtype == torch.float32 and torch.equal(cond, tensors["embeds"].float())
    if pooled is None:
        assert options == {}
    else:
        assert set(options) == {"pooled_output"} and torch.equal(options["pooled_output"], tensors["pooled"])
    assert info.startswith(f"{name}: {family} negative")


def test_an_official_reneg_bin_loads_weights_only(pack, models_dir, tmp_path):
    tensor = _randn(1, 77, 768)
    torch.save(tensor, models_dir / "reneg" / "sd1.5_reneg_emb.bin")
    (conditioning, info) = pack.nodes.LoadReNegNegative().load("sd1.5_reneg_emb.bin", 1.0)
    assert torch.equal(conditioning[0][0], tensor) and "SD1.x" in info
    torch.save({"tensor": tensor, "code": types.SimpleNamespace()}, models_dir / "reneg" / "pickled.bin")
    with pytest.raises(renegx.RenegxError, match="refusing to unpickle"):
        pack.nodes.LoadReNegNegative().load("pickled.bin", 1.0)


def test_a_negative_for_another_family_names_both_shapes(pack, models_dir):
    sd15 = _save(models_dir, "sd15.safetensors", _randn(1, 77, 768))
    sdxl_empty = [[_randn(1, 77, 2048), {"pooled_output": _randn(1, 1280)}]]
    with pytest.raises(pack.errors.PackError) as error:
        pack.nodes.LoadReNegNegative().load(sd15, 1.0, empty=sdxl_empty)
    message = str(error.value)
    assert (
        "SD1.x-shaped (1, 77, 768)" in message and "SDXL-shaped (1, 77, 2048) + pooled (1, 1280)" in message
    )
    assert len(message.splitlines()) == 1
    # SD1.x's own empty prompt comes with a pooled vector its models never read: accepted
    sd15_empty = [[_randn(1, 77, 768), {"pooled_output": _randn(1, 768)}]]
    assert pack.nodes.LoadReNegNegative().load(sd15, 1.0, empty=sd15_empty)[0][0][1] == {}


@pytest.mark.parametrize(
    "embeds, pooled, shape",
    [
        ((1, 120, 4096), None, "(1, 120, 4096)"),  # PixArt-α's T5 rows
        ((1, 77, 2048), None, "(1, 77, 2048)"),  # SDXL's rows without the pooled vector
        ((1, 77, 32), None, "(1, 77, 32)"),  # the tiny model: no ComfyUI family
    ],
)
def test_a_shape_no_family_has_is_refused(pack, models_dir, embeds, pooled, shape):
    name = _save(models_dir, "odd.safetensors", _randn(*embeds))
    with pytest.raises(pack.errors.PackError, match="fits no family ComfyUI serves") as error:
        pack.nodes.LoadReNegNegative().load(name, 1.0)
    assert f"has shape {shape}," in str(error.value) and "SDXL (1, 77, 2048) + pooled (1, 1280)" in str(
        error.value
    )


def test_a_file_made_for_another_text_encoder_of_the_same_width_is_refused(pack, models_dir):
    distilled = {"text_encoder_id": "clip_text_model/h768/l6/v49408"}
    name = _save(models_dir, "distilled.safetensors", _randn(1, 77, 768), metadata=distilled)
    with pytest.raises(
        pack.errors.PackError, match="made for text encoder clip_text_model/h768/l6/v49408, but"
    ):
        pack.nodes.LoadReNegNegative().load(name, 1.0)


def _comfy_clip(**encoders) -> types.SimpleNamespace:
    """What the pack reads of a ComfyUI CLIP: `cond_stage_model.<clip_l|clip_g|...>.transformer`, ComfyUI's
    own text model with transformers' `get_input_embeddings()` (comfy/sd1_clip.py, comfy/clip_model.py)."""
    model = types.SimpleNamespace(
        **{name: types.SimpleNamespace(transformer=encoder) for name, encoder in encoders.items()}
    )
    return types.SimpleNamespace(cond_stage_model=model)


def test_a_connected_clip_checks_the_encoder_weights_the_file_records(
    pack, tiny_families, models_dir, exported
):
    """The tiny export against its own encoder in float16 (as ComfyUI keeps it), then against the same
    encoder with one weight's sign flipped: a warning in info, refused with strict_encoder."""
    from renegx.negatives.fingerprint import EncoderMismatch

    with torch.random.fork_rng():
        encoder = load_backbone("tiny").text_encoder
    recorded = renegx.NegativeEmbedding.load(exported["tiny"]).metadata["text_encoder_fingerprint"]
    name = _install(models_dir, exported["tiny"])
    node = pack.nodes.LoadReNegNegative()
    (_, info) = node.load(name, 1.0, clip=_comfy_clip(clip_l=encoder.half()))
    assert f"text encoder weights: {recorded}, as trained" in info
    with torch.no_grad():
        encoder.get_input_embeddings().weight[3, 1] *= -1
    with pytest.warns(EncoderMismatch):
        (conditioning, info) = node.load(name, 1.0, clip=_comfy_clip(clip_l=encoder))
    assert f"warning: this negative was trained against text encoder {recorded} of 'tiny', but the " in info
    assert "(strict_encoder refuses it)" in info and conditioning[0][0].shape == (1, 77, 32)
    with pytest.raises(pack.errors.PackError, match="; strict_encoder refuses another text encoder"):
        node.load(name, 1.0, clip=_comfy_clip(clip_l=encoder), strict_encoder=True)
    (_, info) = node.load(name, 1.0, clip=types.SimpleNamespace(cond_stage_model=None))
    assert "text encoder weights: the CLIP's could not be read, not compared" in info


def test_an_sdxl_clip_is_fingerprinted_as_renegx_fingerprints_both_encoders(
    pack, tiny_families, models_dir, exported
):
    with torch.random.fork_rng():
        backbone = load_backbone("tiny-sdxl")
    name = _install(models_dir, exported["tiny-sdxl"])
    clip = _comfy_clip(clip_l=backbone.text_encoder, clip_g=backbone.text_encoder_2)
    (_, info) = pack.nodes.LoadReNegNegative().load(name, 1.0, clip=clip)
    assert ", as trained" in info
    unfingerprinted = _save(models_dir, "old.safetensors", _randn(1, 77, 64), _randn(1, 32))
    (_, info) = pack.nodes.LoadReNegNegative().load(unfingerprinted, 1.0, clip=clip)
    assert "the file records none, not compared" in info


def test_a_bank_is_refused_by_the_negative_loader(pack, models_dir):
    rows = renegx.NegativeEmbedding(_randn(2, 77, 768))
    renegx.EmbeddingBank(rows, ["a", "b"]).save(models_dir / "reneg" / "bank.safetensors")
    with pytest.raises(pack.errors.PackError, match="is a bank of 2 prompts: load it with Load ReNeg bank"):
        pack.nodes.LoadReNegNegative().load("bank.safetensors", 1.0)


# -- strength and the null each file was trained against -----------------------------------------------------
def test_strength_moves_an_sd_negative_toward_the_empty_prompt(
    pack, tiny_families, models_dir, exported, empties
):
    name = _install(models_dir, exported["tiny"])
    learned = renegx.NegativeEmbedding.load(exported["tiny"]).embeds
    empty = empties["tiny"]
    node = pack.nodes.LoadReNegNegative()
    for strength in (0.0, 0.3, 1.0):
        (conditioning, info) = node.load(name, strength, empty=empty)
        expected = empty[0][0] + strength * (learned - empty[0][0])
        torch.testing.assert_close(conditioning[0][0], expected, rtol=0, atol=1e-6)
        assert conditioning[0][1] == {}  # the empty prompt's pooled vector: read by no SD1.x-like model
        assert ('null: E("") from the empty input' in info) == (strength != 1)
    assert torch.equal(node.load(name, 0.0, empty=empty)[0][0][0], empty[0][0])
    assert torch.equal(node.load(name, 1.0, empty=empty)[0][0][0], learned)
    with pytest.raises(
        pack.errors.PackError, match="at strength 0.5 moves toward the empty prompt it was trained"
    ):
        node.load(name, 0.5)
    with pytest.raises(pack.errors.PackError, match="strength must lie in"):
        node.load(name, 1.5, empty=empty)


def test_an_sdxl_negative_trained_against_zeros_moves_toward_zeros(
    pack, tiny_families, models_dir, exported, empties
):
    """diffusers' SDXL null is zeros (force_zeros_for_empty_prompt, recorded by the export); ComfyUI's empty
    SDXL prompt is an encoding of "": connected, it is checked against the family and not used."""
    learned = renegx.NegativeEmbedding.load(exported["tiny-sdxl"])
    assert learned.metadata["force_zeros_for_empty_prompt"] == "true"
    name = _install(models_dir, exported["tiny-sdxl"])
    for empty in (None, empties["tiny-sdxl"]):
        (conditioning, info) = pack.nodes.LoadReNegNegative().load(name, 0.25, empty=empty)
        torch.testing.assert_close(conditioning[0][0], 0.25 * learned.embeds, rtol=0, atol=1e-7)
        torch.testing.assert_close(
            conditioning[0][1]["pooled_output"], 0.25 * learned.pooled, rtol=0, atol=1e-7
        )
        assert "null: zeros" in info and ("not used" in info) == (empty is not None)


def test_an_sdxl_negative_trained_against_the_empty_prompt_needs_it(
    pack, tiny_families, models_dir, exported, empties
):
    learned = renegx.NegativeEmbedding.load(exported["tiny-sdxl-empty"])
    assert learned.metadata["force_zeros_for_empty_prompt"] == "false"
    name = _install(models_dir, exported["tiny-sdxl-empty"])
    node = pack.nodes.LoadReNegNegative()
    with pytest.raises(pack.errors.PackError, match="connect CLIPTextEncode of an empty text"):
        node.load(name, 0.5)
    empty = empties["tiny-sdxl"]
    conditioning, _ = node.load(name, 0.0, empty=empty)
    assert torch.equal(conditioning[0][0], empty[0][0])
    assert torch.equal(conditioning[0][1]["pooled_output"], empty[0][1]["pooled_output"])


def test_the_null_must_have_the_files_shape(pack, models_dir):
    """An SD3 file is diffusers-shaped (77 + 256 rows); ComfyUI encodes "" in 77 + 77: no line joins them."""
    name = _save(models_dir, "sd3.safetensors", _randn(1, 333, 4096), _randn(1, 2048))
    comfy_empty = [[_randn(1, 154, 4096), {"pooled_output": _randn(1, 2048)}]]
    assert pack.nodes.LoadReNegNegative().load(name, 1.0, empty=comfy_empty)[0][0][0].shape == (1, 333, 4096)
    with pytest.raises(pack.errors.PackError) as error:
        pack.nodes.LoadReNegNegative().load(name, 0.5, empty=comfy_empty)
    assert "(1, 333, 4096) + pooled (1, 2048); the empty input is (1, 154, 4096)" in str(error.value)


# -- a negative that acts late -------------------------------------------------------------------------------
@pytest.mark.parametrize("scheduler", SCHEDULERS)
@pytest.mark.parametrize("steps", [10, 7, 30])
def test_a_late_negative_guides_the_steps_renegx_draws_it_on(
    pack, tiny_families, models_dir, exported, empties, scheduler, steps
):
    """Two entries, the null on [0, p) and the learned negative on [p, 1]; by ComfyUI's rule each step's model
    call takes exactly one, the learned one on the steps renegx's samplers window it on."""
    late = renegx.NegativeEmbedding.load(exported["tiny-late"])
    name = _install(models_dir, exported["tiny-late"])
    empty, inputs = empties["tiny"], schedule(steps, scheduler)
    conditioning, info = pack.nodes.LoadReNegNegative().load(name, 1.0, empty=empty, **inputs)
    (null, null_options), (learned, learned_options) = conditioning
    assert torch.equal(null, empty[0][0]) and torch.equal(learned, late.embeds)
    percent = learned_options["start_percent"]
    assert (
        null_options == {"start_percent": 0.0, "end_percent": percent}
        and learned_options["end_percent"] == 1.0
    )
    model = inputs["model"]
    model = inputs["model"]
    sigmas = comfy_schedule(model.sampling, scheduler, steps)
    window = Window(late.negative_from)
    for step, sigma in enumerate(sigmas[:-1]):
        assert entries_at(conditioning, sigma, model.sampling) == [1 if window.contains(step, steps) else 0]
    # a sampler's calls inside the switching step (its midpoint, a third, two thirds in log σ) get its null
    start = late.start_index(steps)
    for share in (1 / 3, 1 / 2, 2 / 3):
        inside = sigmas[start] ** (1 - share) * sigmas[start - 1] ** share
        assert entries_at(conditioning, inside, model.sampling) == [0]
    start = late.start_index(steps)
    assert (
        f"the learned negative on steps {start}-{steps - 1} of {steps} ({steps} steps, euler, {scheduler})"
        in info
    )


def test_a_late_sdxl_negative_keeps_zeros_before_its_window(pack, tiny_families, models_dir, exported):
    late = renegx.NegativeEmbedding.load(exported["tiny-sdxl-late"])
    name = _install(models_dir, exported["tiny-sdxl-late"])
    conditioning, _ = pack.nodes.LoadReNegNegative().load(name, 1.0, **schedule(8))
    (null, null_options), (learned, learned_options) = conditioning
    assert not null.any() and not null_options["pooled_output"].any()
    assert torch.equal(learned, late.embeds) and torch.equal(learned_options["pooled_output"], late.pooled)


def test_a_late_negative_needs_the_model_and_its_empty_prompt(
    pack, tiny_families, models_dir, exported, empties
):
    name = _install(models_dir, exported["tiny-late"])
    node = pack.nodes.LoadReNegNegative()
    with pytest.raises(pack.errors.PackError, match="acts late and needs the empty prompt"):
        node.load(name, 1.0, **schedule(10))
    with pytest.raises(pack.errors.PackError, match="connect the model and set steps, sampler and scheduler"):
        node.load(name, 1.0, empty=empties["tiny"])


def test_a_late_negative_with_too_few_steps_is_the_null_throughout(
    pack, tiny_families, models_dir, exported, empties
):
    """negative_from 0.5 of one step: renegx's window starts at step 1, after the only one."""
    name = _install(models_dir, exported["tiny-late"])
    conditioning, info = pack.nodes.LoadReNegNegative().load(name, 1.0, empty=empties["tiny"], **schedule(1))
    assert len(conditioning) == 1 and torch.equal(conditioning[0][0], empties["tiny"][0][0])
    assert "on none of the 1 steps" in info


def test_a_schedule_that_does_not_descend_has_no_window(pack):
    window = sys.modules[f"{PACK}.window"]
    flat = window.Schedule([2.0, 1.0, 1.0, 0.0], DiscreteSampling().percent_to_sigma, "flat")
    with pytest.raises(pack.errors.PackError, match="does not descend at step 2"):
        window.start_percent(flat, 2)


# -- banks ---------------------------------------------------------------------------------------------------
@pytest.fixture
def bank_file(models_dir, exported) -> tuple[str, torch.Tensor, torch.Tensor]:
    """A bank of two rows built from the tiny exports, with the global file as fallback."""
    rows = torch.cat([renegx.NegativeEmbedding.load(exported["tiny"]).embeds, _randn(1, 77, 32)])
    fallback = renegx.NegativeEmbedding.load(exported["tiny"])
    rows_embedding = renegx.NegativeEmbedding(rows, metadata=fallback.metadata)
    renegx.EmbeddingBank(rows_embedding, ["a red circle", "x"], fallback).save(
        models_dir / "reneg" / "bank.safetensors"
    )
    return "bank.safetensors", rows, fallback.embeds


def test_a_bank_gives_the_prompts_row(pack, tiny_families, bank_file):
    name, rows, _ = bank_file
    conditioning, fell_back, info = pack.nodes.LoadReNegBank().load(name, "x", "global", 1.0)
    assert torch.equal(conditioning[0][0], rows[1:]) and fell_back is False
    assert "prompt 'x': its own row" in info


def test_a_prompt_the_bank_lacks_falls_back_and_says_so(pack, tiny_families, bank_file):
    name, _, fallback = bank_file
    conditioning, fell_back, info = pack.nodes.LoadReNegBank().load(name, "a red circle ", "global", 1.0)
    assert torch.equal(conditioning[0][0], fallback) and fell_back is True  # exact text: the space counts
    assert "not in the bank of 2 prompts: the global fallback" in info
    with pytest.raises(renegx.RenegxError, match="bank fallback is 'error'"):
        pack.nodes.LoadReNegBank().load(name, "a blue square", "error", 1.0)


def test_a_bank_without_fallback_refuses_an_unknown_prompt(pack, tiny_families, models_dir):
    rows = renegx.NegativeEmbedding(_randn(1, 77, 32), metadata={"text_encoder_id": TINY_CLIP})
    renegx.EmbeddingBank(rows, ["only"]).save(models_dir / "reneg" / "bare.safetensors")
    with pytest.raises(renegx.RenegxError, match="the bank has no global fallback"):
        pack.nodes.LoadReNegBank().load("bare.safetensors", "another", "global", 1.0)
    _save(models_dir, "global.safetensors", _randn(1, 77, 32))
    with pytest.raises(renegx.RenegxError, match="is a global embedding, not a bank"):
        pack.nodes.LoadReNegBank().load("global.safetensors", "only", "global", 1.0)


def test_a_late_bank_row_is_windowed_like_a_file(pack, tiny_families, models_dir, exported, empties):
    late = renegx.NegativeEmbedding.load(exported["tiny-late"])
    renegx.EmbeddingBank(late, ["a red circle"]).save(models_dir / "reneg" / "late-bank.safetensors")
    conditioning, fell_back, _ = pack.nodes.LoadReNegBank().load(
        "late-bank.safetensors", "a red circle", "global", 1.0, empty=empties["tiny"], **schedule(10)
    )
    assert not fell_back and len(conditioning) == 2 and torch.equal(conditioning[1][0], late.embeds)


# -- the example workflows -----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", sorted((PACK_DIR / "workflows").glob("*_api.json")), ids=lambda p: p.name)
def test_example_workflows_are_comfyui_api_graphs_the_nodes_accept(pack, path):
    graph = json.loads(path.read_text())
    for node_id, node in graph.items():
        assert set(node) == {"class_type", "inputs"}, node_id
        for value in node["inputs"].values():
            if isinstance(value, list):  # a link: [source node id, output index]
                assert value[0] in graph and isinstance(value[1], int)
    ours = [node for node in graph.values() if node["class_type"] in pack.NODE_CLASS_MAPPINGS]
    assert len(ours) == 1
    inputs = pack.NODE_CLASS_MAPPINGS[ours[0]["class_type"]].INPUT_TYPES()
    assert (
        set(inputs["required"]) <= set(ours[0]["inputs"]) <= set(inputs["required"]) | set(inputs["optional"])
    )
    sampler = next(node for node in graph.values() if node["class_type"] == "KSampler")["inputs"]
    for same in ("steps", "sampler_name", "scheduler"):  # the window is placed for the KSampler's schedule
        assert ours[0]["inputs"][same] == sampler[same]
