"""Single-file checkpoints (`renegx.models.single_file`): the toy model and tiny SDXL written in the original
SD/SDXL layout (tests/single_file_layout.py) load through diffusers' single-file loader with bit-identical
weights, draw the same latents as their folders, train, infer and evaluate; anything else is one line."""

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from assertions import assert_one_line_error
from builders import quiet_pipeline
from safetensors.torch import load_file, save_file
from single_file_layout import sd_single_file, sdxl_single_file, write_single_file

from renegx.cli import evaluate_main, infer_main, train_main
from renegx.configs import path_of
from renegx.models import ModelError, family_of, load_backbone
from renegx.models.sd import load_components
from renegx.models.single_file import checkpoint_kind
from renegx.negatives.embedding import NegativeEmbedding
from renegx.tiny.sdxl import tiny_sdxl_components
from renegx.toyworld import generator_folder

ROOT = Path(__file__).resolve().parents[1]
TINY_CONFIG = str(path_of("train/tiny"))
PROMPTS = ["a red circle", "a blue square on grass"]


@pytest.fixture(scope="session")
def files(tmp_path_factory) -> dict[str, tuple[str, str]]:
    """{"toy" | "tiny-sdxl": (single file, its diffusers config folder)}, written once per session."""
    from diffusers import StableDiffusionXLPipeline

    root = tmp_path_factory.mktemp("single_files")
    toy_folder = str(generator_folder())
    toy = write_single_file(sd_single_file(load_components(toy_folder)), root / "toy.safetensors")
    with torch.random.fork_rng():
        components = tiny_sdxl_components()
    StableDiffusionXLPipeline(**components, add_watermarker=False).save_pretrained(root / "tiny_sdxl")
    sdxl = write_single_file(sdxl_single_file(components), root / "tiny_sdxl.safetensors")
    return {"toy": (str(toy), toy_folder), "tiny-sdxl": (str(sdxl), str(root / "tiny_sdxl"))}


def _quietly(call):
    """`call()` without the one-line note that a tiny file's kind was read from its text encoders."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*single-file keys do not say")
        return call()


def _states_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[key], sb[key]) for key in sa)


# -- the layout, checked by diffusers' own loader ------------------------------------------------------------
def test_the_original_layout_round_trips_through_diffusers_own_single_file_loader(files):
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
    from diffusers.loaders.single_file_utils import create_diffusers_clip_model_from_ldm
    from transformers import CLIPTextModelWithProjection

    file, folder = files["toy"]
    pipe = StableDiffusionPipeline.from_single_file(file, config=folder, local_files_only=True)
    original = load_components(folder)
    for name in ("unet", "vae", "text_encoder"):
        assert _states_equal(getattr(pipe, name), original[name]), name

    file, folder = files["tiny-sdxl"]
    pipe = StableDiffusionXLPipeline.from_single_file(file, config=folder, local_files_only=True)
    with torch.random.fork_rng():
        original = tiny_sdxl_components()
    for name in ("unet", "vae", "text_encoder"):
        assert _states_equal(getattr(pipe, name), original[name]), name
    # diffusers' pipeline loader gives both tiny encoders (one width) CLIP-L's keys; its converter, handed the
    # OpenCLIP-G keys alone, reads the second (as renegx loads it).
    own = {k: v for k, v in load_file(file).items() if k.startswith("conditioner.embedders.1.model.")}
    second = create_diffusers_clip_model_from_ldm(
        CLIPTextModelWithProjection, own, subfolder="text_encoder_2", config=folder, local_files_only=True
    )
    assert _states_equal(second, original["text_encoder_2"])


# -- what a file is, from its keys ---------------------------------------------------------------------------
UNET_V1 = {"model.diffusion_model.output_blocks.11.0.skip_connection.weight": (4,)}
VAE = {"first_stage_model.decoder.conv_out.weight": (3,)}
CLIP_L = {"cond_stage_model.transformer.text_model.final_layer_norm.weight": (4,)}
SDXL_TEXT = {
    "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": (4,),
    "conditioner.embedders.1.model.transformer.resblocks.9.mlp.c_proj.bias": (4,),
}


@pytest.mark.parametrize(
    ("keys", "kind", "label"),
    [
        ({**UNET_V1, **VAE, **CLIP_L}, "v1", "SD1.x"),
        (
            {
                "model.diffusion_model.input_blocks.2.1.transformer_blocks.0.attn2.to_k.weight": (8, 1024),
                **VAE,
                "cond_stage_model.model.ln_final.weight": (4,),
            },
            "v2",
            "SD2.x",
        ),
        ({"model.diffusion_model.out.2.weight": (4,), **VAE, **SDXL_TEXT}, "xl_base", "SDXL"),
    ],
)
def test_a_full_size_checkpoint_is_the_kind_diffusers_reads_without_a_note(tmp_path, keys, kind, label):
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in keys.items()}, str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        found = checkpoint_kind(str(path))
    assert (found.model_type, found.label, found.sure) == (kind, label, True)
    assert family_of(str(path)).name == ("sdxl" if kind == "xl_base" else "sd")


@pytest.mark.parametrize(("name", "label", "family"), [("toy", "SD1.x", "sd"), ("tiny-sdxl", "SDXL", "sdxl")])
def test_a_file_diffusers_cannot_tell_is_read_by_its_text_encoders_and_says_so_once(
    files, tmp_path, name, label, family
):
    copy = tmp_path / "copy.safetensors"
    shutil.copy(files[name][0], copy)
    with pytest.warns(UserWarning) as notes:
        assert family_of(str(copy)).name == family
        family_of(str(copy))
    assert len(notes) == 1 and len(str(notes[0].message).splitlines()) == 1
    assert f"it is read as {label}" in str(notes[0].message) and str(copy) in str(notes[0].message)


@pytest.mark.parametrize(
    ("keys", "message"),
    [
        ({"model.diffusion_model.input_blocks.0.0.weight": (320, 9, 3, 3), **VAE, **CLIP_L}, "'inpainting'"),
        (
            {"conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias": (4,), **VAE},
            "'xl_refiner'",
        ),
        ({"negative_prompt_embeds": (1, 77, 64)}, "no UNet weights"),
        ({**UNET_V1, **CLIP_L}, "no VAE weights"),
        ({**UNET_V1, **VAE}, "no text encoder weights"),
        (
            {
                **UNET_V1,
                **VAE,
                **{
                    key.replace("transformer.resblocks.9.mlp.c_proj", "ln_final"): shape
                    for key, shape in SDXL_TEXT.items()
                },
            },
            "the keys of an SD1.x UNet but the text encoder of SDXL",
        ),
    ],
)
def test_a_file_that_is_no_sd_or_sdxl_checkpoint_is_one_line(tmp_path, keys, message):
    path = tmp_path / "file.safetensors"
    save_file({key: torch.zeros(shape) for key, shape in keys.items()}, str(path))
    assert_one_line_error(ModelError, lambda: family_of(str(path)), str(path), message)


# -- the loaded model is the folder's ------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["toy", "tiny-sdxl"])
def test_the_single_file_draws_the_same_latents_as_the_folder(files, name):
    file, folder = files[name]
    latents = {}
    for model, config in ((file, folder), (folder, None)):
        with torch.random.fork_rng():
            backbone = _quietly(lambda m=model, c=config: load_backbone(m, config=c))
        pipe = quiet_pipeline(backbone)
        generators = [torch.Generator().manual_seed(seed) for seed in range(len(PROMPTS))]
        latents[model] = pipe(
            PROMPTS, num_inference_steps=3, generator=generators, output_type="latent"
        ).images
    difference = (latents[file] - latents[folder]).abs().max().item()
    print(f"{name}: max |latent difference| single file vs folder = {difference}")  # shown with -s
    assert difference == 0.0


def test_the_config_decides_v_prediction_and_needs_no_weights(files, tmp_path):
    """A config folder is the base model's configuration only (as diffusers fetches: JSON and tokenizer
    files); its scheduler's prediction type, or the flag, decides."""
    file, folder = files["toy"]
    config = tmp_path / "config"
    shutil.copytree(folder, config, ignore=shutil.ignore_patterns("*.safetensors"))
    scheduler = config / "scheduler" / "scheduler_config.json"
    scheduler.write_text(json.dumps({**json.loads(scheduler.read_text()), "prediction_type": "v_prediction"}))
    backbone = _quietly(lambda: load_backbone(file, clip_skip=1, config=str(config)))
    assert backbone.prediction_type == "v_prediction" and backbone.clip_skip == 1
    flagged = _quietly(lambda: load_backbone(file, prediction_type="epsilon", config=str(config)))
    assert flagged.prediction_type == "epsilon"


# -- every job runs on it ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["toy", pytest.param("tiny-sdxl", marks=pytest.mark.slow)])
def test_fit_runs_two_steps_on_the_single_file(files, tmp_path, name):
    file, folder = files[name]
    argv = ["fit", "--config", TINY_CONFIG, "--model.model", file, "--model.model_config", folder,
            "--trainer.max_steps", "2", "--model.num_inference_steps", "2", "--model.stop_steps", "1",
            "--trainer.num_sanity_val_steps", "0",
            "--trainer.logger.init_args.save_dir", str(tmp_path)]  # fmt: skip
    assert _quietly(lambda: train_main(argv)) == 0
    exported = NegativeEmbedding.load(tmp_path / "tiny" / "version_0" / "negative.safetensors")
    assert exported.metadata["base_model"] == file and exported.metadata["model_config"] == folder
    assert exported.metadata["train_steps"] == "2"


@pytest.mark.parametrize("sampler", [[], ["--sampler", "cfg"]], ids=["pipeline", "sampler"])
@pytest.mark.parametrize("name", ["toy", "tiny-sdxl"])
def test_infer_runs_on_the_single_file(files, tmp_path, name, sampler):
    file, folder = files[name]
    argv = ["--model", file, "--model-config", folder, "--prompt", PROMPTS[0], "--steps", "2",
            "--out", str(tmp_path), *sampler]  # fmt: skip
    assert _quietly(lambda: infer_main(argv)) == 0
    assert json.loads((tmp_path / "0000_seed0.json").read_text())["model"] == file


def test_evaluate_runs_on_the_single_file(files, tmp_path):
    file, folder = files["toy"]
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    argv = ["--model", file, "--model-config", folder, "--negatives", "null,text:blurry",
            "--benchmark", str(tmp_path / "prompts.txt"), "--judges", "clip", "--judge-opt", "model=tiny",
            "--steps", "2", "--bootstrap", "10", "--out", str(tmp_path / "out")]  # fmt: skip
    assert _quietly(lambda: evaluate_main(argv)) == 0
    assert (tmp_path / "out" / "report.json").is_file()
    manifest = json.loads((tmp_path / "out" / "evaluation.json").read_text())
    assert manifest["generation"]["model"] == file and manifest["generation"]["model_config"] == folder


@pytest.mark.slow
def test_per_prompt_tunes_on_the_single_file(files, tmp_path):
    file, folder = files["toy"]
    start = tmp_path / "global.safetensors"
    backbone = _quietly(lambda: load_backbone(file, config=folder))
    NegativeEmbedding(backbone.null_embedding(), metadata={"base_model": file}).save(start)
    (tmp_path / "prompts.txt").write_text(PROMPTS[0] + "\n")
    argv = ["per-prompt", "--config", TINY_CONFIG, "--model.model", file, "--model.model_config", folder,
            "--model.num_inference_steps", "2", "--model.stop_steps", "1", "--embedding", str(start),
            "--prompts", str(tmp_path / "prompts.txt"), "--out", str(tmp_path / "bank.safetensors"),
            "--max-steps", "1", "--patience", "1", "--eval-seeds", "0"]  # fmt: skip
    assert _quietly(lambda: train_main(argv)) == 0
    assert (tmp_path / "bank.safetensors").is_file()


# -- bad files and configs: one line -------------------------------------------------------------------------
def _truncated(files, tmp_path) -> str:
    data = Path(files["toy"][0]).read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    return str(tmp_path / "cut.safetensors")


def _load_without(files, tmp_path, name: str, key: str):
    """Load `name`'s single file written without the tensor `key`, with its config."""
    file, folder = files[name]
    tensors = load_file(file)
    del tensors[key]
    save_file(tensors, str(tmp_path / f"partial_{name}.safetensors"))
    return load_backbone(str(tmp_path / f"partial_{name}.safetensors"), config=folder)


def test_bad_files_and_configs_are_one_line(files, tmp_path, monkeypatch):
    import huggingface_hub

    toy, toy_folder = files["toy"]
    sdxl_folder = files["tiny-sdxl"][1]
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    cases = [
        (lambda: load_backbone(_truncated(files, tmp_path)), "not a readable .safetensors file"),
        (lambda: load_backbone(str(tmp_path / "junk.safetensors")), "not a readable .safetensors file"),
        (lambda: load_backbone(str(tmp_path / "absent.safetensors")), "single-file checkpoint not found"),
        (lambda: load_backbone(str(tmp_path / "model.ckpt")), "only .safetensors checkpoints are read"),
        (lambda: load_backbone(toy, config=sdxl_folder), "is a StableDiffusionXLPipeline folder", "SD1.x"),
        (lambda: load_backbone(toy, config=str(tmp_path / "nowhere")), "config folder not found"),
        (lambda: load_backbone("toy", config=toy_folder), "a model config is for single-file checkpoints"),
        (
            lambda: _load_without(files, tmp_path, "toy", "model.diffusion_model.out.2.weight"),
            "lacks weights the config describes",
        ),
        (
            lambda: _load_without(
                files, tmp_path, "tiny-sdxl", "conditioner.embedders.1.model.ln_final.bias"
            ),
            "CLIPTextModelWithProjection lacks 1 of the weights",
        ),
    ]
    for call, *substrings in cases:
        _quietly(lambda c=call, s=substrings: assert_one_line_error(ModelError, c, *s))
    # a file whose layer sizes are not the config's
    sizes = tmp_path / "sizes"
    shutil.copytree(toy_folder, sizes, ignore=shutil.ignore_patterns("*.safetensors"))
    encoder = sizes / "text_encoder" / "config.json"
    encoder.write_text(json.dumps({**json.loads(encoder.read_text()), "hidden_size": 32}))
    message = _quietly(
        lambda: assert_one_line_error(ModelError, lambda: load_backbone(toy, config=str(sizes)))
    )
    assert "does not load with config" in message and "expected shape" in message
    # no config: diffusers' default hub id, which offline loads only from the (here empty) cache
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "cache"))
    _quietly(
        lambda: assert_one_line_error(
            ModelError,
            lambda: load_backbone(toy),
            "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "--model-config",
        )
    )


def test_a_bad_file_stops_infer_with_one_line(files, tmp_path, capsys):
    (tmp_path / "junk.safetensors").write_bytes(b"not a checkpoint at all")
    argv = ["--model", str(tmp_path / "junk.safetensors"), "--prompt", "a cat", "--out", str(tmp_path / "o")]
    assert infer_main(argv) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("renegx: error: ") and "junk.safetensors" in error[0]
