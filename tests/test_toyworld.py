"""The toy world: generator of pictures and captions, tokenizer, meters, shipped weights and their recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from renegx.toyworld import ToyWorldError, flow_transformer_folder, paths, sibling_unet_folder, weights_folder
from renegx.toyworld.build import RECIPE, RECIPE_VERSION, _generator_data, pictures, prompt_sets, recipe_hash
from renegx.toyworld.meters import meter_readings
from renegx.toyworld.render import render_batch
from renegx.toyworld.scene import (
    COLOURS,
    DEFECTS,
    OVERDONE,
    SHAPES,
    Scene,
    caption,
    named_attributes,
    sample_scene,
    vocabulary,
)
from renegx.toyworld.tokenizer import load_tokenizer, write_tokenizer_files

MAX_SHIPPED_BYTES = 30 * 1024 * 1024


def test_scenes_are_often_defective_and_captions_rarely_say_so():
    rng = np.random.default_rng(0)
    scenes = [sample_scene(rng) for _ in range(4000)]
    defective = [s for s in scenes if s.defects]
    assert 0.55 < len(defective) / len(scenes) < 0.65
    mentions = [any(d in caption(s, rng) for d in DEFECTS) for s in defective]
    assert 0.25 < np.mean(mentions) < 0.35
    assert not any(any(d in caption(s, rng) for d in DEFECTS) for s in scenes if not s.defects)


def test_every_caption_names_its_shape_and_colour():
    rng = np.random.default_rng(1)
    for _ in range(500):
        scene = sample_scene(rng)
        named = named_attributes(caption(scene, rng))
        assert (named.get("shape"), named.get("colour")) == (scene.shape, scene.colour)


def test_rendering_is_seeded_and_defects_move_the_meters():
    base = Scene("circle", "red", "large", "center", "white")
    variants = {
        d: Scene(*(base.shape, base.colour, base.size, base.position, base.background), (d,))
        for d in DEFECTS + OVERDONE
    }
    clean = torch.from_numpy(render_batch([base] * 32, seed=3)).permute(0, 3, 1, 2).float() / 255
    assert np.array_equal(render_batch([base] * 2, seed=3), render_batch([base] * 2, seed=3))
    readings = meter_readings(clean)

    def reading(defect: str, meter: str) -> float:
        images = (
            torch.from_numpy(render_batch([variants[defect]] * 32, seed=3)).permute(0, 3, 1, 2).float() / 255
        )
        return float(meter_readings(images)[meter].mean())

    assert reading("blurry", "sharpness") < 0.6 * float(readings["sharpness"].mean())
    assert reading("noisy", "noise_energy") > 3 * float(readings["noise_energy"].mean())
    assert reading("faded", "contrast") < 0.6 * float(readings["contrast"].mean())
    assert reading("oversaturated", "colour_excess") > 1.3 * float(readings["colour_excess"].mean())
    assert reading("oversharpened", "overshoot") > 2 * float(readings["overshoot"].max())


def test_tokenizer_keeps_every_toy_word_whole_and_anything_else_tokenizes(tmp_path):
    write_tokenizer_files(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    for word in vocabulary():
        assert len(tokenizer(word).input_ids) == 3, word  # <start> word <end>
    assert tokenizer.model_max_length == 77
    assert len(tokenizer("a zebra").input_ids) > 4  # unknown words fall back to bytes


def test_held_out_prompts_never_reach_the_generator():
    heldout, train = prompt_sets(RECIPE)
    assert len(heldout) == len(set(heldout)) == RECIPE["prompts"]["heldout"]
    assert not set(heldout) & set(train)
    assert not any(any(d in p for d in DEFECTS) for p in heldout + train)
    for stage in ("generator", "sibling"):
        _, captions = _generator_data({**RECIPE[stage], "pictures": 3000}, set(heldout))
        assert not set(captions) & set(heldout)


def test_missing_weights_fail_with_the_rebuild_command(tmp_path):
    with pytest.raises(ToyWorldError, match="python -m renegx.toyworld.build"):
        weights_folder(tmp_path)


@pytest.mark.parametrize(
    ("part", "read", "message"),
    [
        ("sibling_unet", sibling_unet_folder, r"no second generator .*--stages sibling$"),
        ("flow_transformer", flow_transformer_folder, r"no flow-matching generator .*--stages flow$"),
    ],
)
def test_weights_without_a_later_generator_name_the_stage_that_builds_it(tmp_path, part, read, message):
    import shutil

    shutil.copytree(paths.SHIPPED, tmp_path / "w", ignore=shutil.ignore_patterns(part))
    assert weights_folder(tmp_path / "w")  # everything else still works
    with pytest.raises(ToyWorldError, match=message):
        read(tmp_path / "w")


def test_the_flow_generator_is_an_sd3_model_on_the_toy_text_encoder():
    """`toy-flow`: SD3's layout (the toy text encoder in both CLIP slots, no T5 rows), the toy VAE, its own
    transformer; prompts encode as `StableDiffusion3Pipeline.encode_prompt` encodes them."""
    from renegx.models import family_of, load_backbone
    from renegx.models.sd3 import SD3Backbone
    from renegx.models.sdxl import pack_conditioning

    toy, flow = load_backbone("toy"), load_backbone("toy-flow")
    assert isinstance(flow, SD3Backbone) and family_of("toy-flow").scheduler == "flow"
    assert (flow.sequence_length, flow.hidden_size, flow.pooled_size) == (77, 128, 128)
    assert flow.latent_shape == (4, 8, 8) and flow.unet.dtype == torch.float32
    ours = toy.text_encoder.state_dict()
    theirs = {k.removeprefix("text_model."): v for k, v in flow.text_encoder.state_dict().items()}
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert torch.equal(flow.text_encoder.text_projection.weight, torch.eye(64))
    vae, flow_vae = toy.vae.state_dict(), flow.vae.state_dict()
    assert all(torch.equal(vae[k], flow_vae[k]) for k in vae)
    pipe = flow.pipeline()
    embeds, _, pooled, _ = pipe.encode_prompt(
        ["a red circle"], None, None, do_classifier_free_guidance=False, max_sequence_length=0
    )
    assert torch.equal(flow.encode_prompts(["a red circle"]), pack_conditioning(embeds, pooled))


def test_the_flow_generators_training_rollout_equals_its_sd3_pipeline():
    """The no-grad guided rollout with a learned negative draws what `StableDiffusion3Pipeline` draws from
    string prompts with `negative_prompt_embeds`/`negative_pooled_prompt_embeds` (max difference 0)."""
    from renegx.guidance import rollout_to
    from renegx.models import load_backbone

    flow = load_backbone("toy-flow")
    pipe = flow.pipeline()
    pipe.set_progress_bar_config(disable=True)
    generator = torch.Generator().manual_seed(0)
    negative = flow.null_embedding() + 0.1 * torch.randn(1, 78, 128, generator=generator)
    embeds, pooled = flow.negative_parts(negative)
    latents = torch.randn(2, *flow.latent_shape, generator=generator)
    prompts = ["a red circle", "a small blue square on a black background"]
    expected = pipe(
        prompts,
        negative_prompt_embeds=embeds.expand(2, -1, -1),
        negative_pooled_prompt_embeds=pooled.expand(2, -1),
        latents=latents.clone(),
        num_inference_steps=6,
        guidance_scale=5.0,
        output_type="latent",
    ).images
    ours = rollout_to(flow.unet, flow.schedule(6), latents, negative, flow.encode_prompts(prompts), 5.0, 6)
    assert (ours - expected).abs().max() == 0


def test_the_second_generator_shares_the_text_side_and_has_its_own_unet():
    from renegx.models import load_backbone

    toy, sibling = load_backbone("toy"), load_backbone("toy-sibling")
    assert sibling.name == "toy-sibling"
    for part in ("text_encoder", "vae"):
        ours, theirs = getattr(toy, part).state_dict(), getattr(sibling, part).state_dict()
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert toy.tokenizer.get_vocab() == sibling.tokenizer.get_vocab()
    assert sibling.unet.dtype == torch.float32
    assert tuple(sibling.unet.config.block_out_channels) == tuple(RECIPE["sibling"]["channels"])
    assert sibling.unet.config.cross_attention_dim == toy.unet.config.cross_attention_dim
    prompt = toy.encode_prompts(["a red circle"])
    assert torch.equal(prompt, sibling.encode_prompts(["a red circle"]))
    latents = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        outputs = [b.unet(latents, 500, prompt).sample for b in (toy, sibling)]
    assert not torch.allclose(*outputs, atol=1e-2)


# ---------------------------------------------------------------- shipped weights


def test_shipped_weights_are_complete_small_and_match_the_recipe():
    folder = weights_folder(paths.SHIPPED)
    record = json.loads((folder / "recipe.json").read_text())
    assert record["version"] == RECIPE_VERSION
    assert record["recipe_hash"] == recipe_hash(RECIPE), "shipped weights were built by another recipe"
    size = sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())
    assert size <= MAX_SHIPPED_BYTES
    assert not list(Path(folder).rglob("*.bin")) and not list(Path(folder).rglob("*.partial"))


def test_the_generator_loads_in_diffusers_own_pipeline():
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from renegx.toyworld import generator_folder

    pipe = StableDiffusionPipeline.from_pretrained(generator_folder())
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    out = pipe(
        "a red circle", num_inference_steps=5, generator=torch.Generator().manual_seed(0), output_type="np"
    )
    assert out.images.shape == (1, 32, 32, 3)
    assert np.isfinite(out.images).all()


def _pairs(seed: int, count: int = 96):
    from renegx.toyworld.build import clean_and_defective

    clean, clean_images, broken_images = clean_and_defective(seed, count)
    rng = np.random.default_rng(seed)
    return [caption(s, rng, mention_defects=False) for s in clean], clean_images, broken_images


@pytest.mark.parametrize("name", ["toy-pref", "toy-independent"])
def test_both_judges_prefer_clean_matching_pictures(name):
    from renegx.rewards import build_reward

    reward = build_reward(name)
    prompts, clean, broken = _pairs(seed=321)
    with torch.no_grad():
        good, bad = reward(clean, prompts), reward(broken, prompts)
        mismatched = reward(clean.roll(1, 0), prompts)
    assert (good > bad).float().mean() > 0.8
    assert (good > mismatched).float().mean() > 0.8
    images = clean[:2].clone().requires_grad_(True)
    reward(images, prompts[:2]).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def test_classifier_and_captioner_read_shape_and_colour_off_fresh_pictures():
    from renegx.samplers.toy_external import ToyCaptioner, ToyOracle
    from renegx.toyworld import load_attribute_net

    scenes = [Scene(sh, co, "large", "center", "white") for sh in SHAPES for co in COLOURS]
    images = pictures(scenes, seed=11)
    rows = load_attribute_net("classifier").describe(images)
    assert (
        np.mean([(r["shape"], r["colour"]) == (s.shape, s.colour) for r, s in zip(rows, scenes, strict=True)])
        > 0.9
    )
    captions = ToyCaptioner().caption(images)
    assert np.mean([f"{s.colour} {s.shape}" in c for c, s in zip(captions, scenes, strict=True)]) > 0.9
    oracle = ToyOracle()
    assert oracle.ask(images[:1], "What shape is it?") == [scenes[0].shape]
    assert oracle.ask(images[:1], "What colour is it?") == [scenes[0].colour]
    right = oracle.yes_probability(
        images[:1], f'Does this image show "a {scenes[0].colour} {scenes[0].shape}"?'
    )
    wrong_shape = next(s for s in SHAPES if s != scenes[0].shape)
    wrong = oracle.yes_probability(images[:1], f'Does this image show "a {scenes[0].colour} {wrong_shape}"?')
    assert right > 0.5 > wrong


@pytest.mark.slow
def test_the_recipe_runs_end_to_end_at_miniature_scale(tmp_path):
    from diffusers import SD3Transformer2DModel, StableDiffusionPipeline, UNet2DConditionModel

    from renegx.toyworld.build import STAGES, build_stages

    recipe = json.loads(json.dumps(RECIPE))
    recipe["prompts"].update(heldout=4, train=8)
    for part in (
        recipe["vae"],
        recipe["generator"],
        recipe["sibling"],
        recipe["flow"],
        *recipe["judges"].values(),
    ):
        part.update(pictures=64, steps=2, batch=8)
    recipe["generator"]["warmup"] = recipe["sibling"]["warmup"] = recipe["flow"]["warmup"] = 1
    recipe["meters"]["pictures"] = 32
    record = build_stages(tmp_path, list(STAGES), recipe)
    assert set(record["seconds"]) == set(STAGES) and record["recipe_hash"] == recipe_hash(recipe)
    assert weights_folder(tmp_path) == tmp_path
    assert not list(tmp_path.rglob("*.partial"))
    pipe = StableDiffusionPipeline.from_pretrained(tmp_path / "generator")
    assert pipe.unet.config.sample_size * pipe.vae_scale_factor == 32
    sibling = UNet2DConditionModel.from_pretrained(sibling_unet_folder(tmp_path))
    assert sibling.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    flow = SD3Transformer2DModel.from_pretrained(flow_transformer_folder(tmp_path))
    assert flow.config.joint_attention_dim == 2 * pipe.text_encoder.config.hidden_size


def test_the_toy_model_brings_its_own_captioner_and_oracle_to_the_samplers():
    from renegx.samplers import build_sampler, load_sampling_model
    from renegx.samplers.external import build_captioner, build_oracle
    from renegx.samplers.toy_external import ToyCaptioner, ToyOracle

    model = load_sampling_model("toy")
    assert isinstance(build_captioner("auto", model), ToyCaptioner)
    assert isinstance(build_oracle("auto", model), ToyOracle)
    vlm = build_sampler("vlm", model, {"steps": 6, "oracle": "auto", "questions": ["What shape is it?"]})
    result = vlm.sample("a red circle", seed=0)
    assert result.image.shape == (1, 3, 32, 32)
    assert result.record.nfe == 12


@pytest.mark.slow
def test_novel_phrasings_are_text_the_generator_never_saw():
    """The `novel` split and its novel training prompts: no caption the generator was trained on, no held-out
    prompt, every word in the toy vocabulary, the two sets disjoint."""
    from renegx.toyworld.splits import novel_prompts, training_prompts

    heldout, _ = prompt_sets(RECIPE)
    _, captions = _generator_data(RECIPE["generator"], set(heldout))
    evaluation = novel_prompts(64)
    training = training_prompts("novel", evaluation)
    assert evaluation == novel_prompts(64) and len(set(training)) == len(training) == 512
    assert not (set(evaluation) | set(training)) & (set(captions) | set(heldout))
    assert not set(evaluation) & set(training)
    words = set(vocabulary())
    assert all(w in words for p in evaluation + training for w in p.replace(",", " ").split())


def test_the_rest_of_the_training_split_leaves_out_exactly_the_prompts_read():
    """`--train-on rest`: the training split less the evaluation's prompts, in the split's order."""
    from renegx.toyworld.splits import prompts_of_split, training_prompts

    evaluation, train = prompts_of_split("train", 64), training_prompts("train", [])
    rest = training_prompts("rest", evaluation)
    assert len(rest) == len(train) - 64 and not set(rest) & set(evaluation)
    assert rest == [p for p in train if p not in evaluation]


def test_the_reworded_set_is_a_second_phrasing_apart_from_the_first():
    """The `reworded` split: other templates than the captions' and the `novel` set's, with function words no
    caption has; no prompt the generator or the held-out set has, every one naming a shape and a colour the
    world draws."""
    from renegx.toyworld.scene import _TEMPLATES
    from renegx.toyworld.splits import NOVEL_TEMPLATES, REWORDED_TEMPLATES, novel_prompts

    assert not set(REWORDED_TEMPLATES) & (set(NOVEL_TEMPLATES) | set(_TEMPLATES))
    heldout, _ = prompt_sets(RECIPE)
    _, captions = _generator_data(RECIPE["generator"], set(heldout))
    reworded = novel_prompts(64, phrasing="reworded")
    assert len(set(reworded)) == 64
    assert not set(reworded) & (set(captions) | set(heldout) | set(novel_prompts(64)))
    used = {w for p in reworded for w in p.replace(",", " ").replace(":", " ").split()}
    assert {"there", "with", "drawn", "showing"} <= used - set(vocabulary())
    assert all({"shape", "colour"} <= set(named_attributes(p)) for p in reworded)
