"""Re-create the toy world's shipped weights from nothing: `python -m renegx.toyworld.build [--out DIR]`.

Stages, in order (each seeded, each written atomically, `--stages` picks some):
  prompts     held-out and training prompt sets (package data; held-out captions never reach the generator)
  vae         AutoencoderKL, 32 px → 8×8×4 latents, its scaling factor measured
  generator   text encoder + UNet trained together (ε-prediction, SD noise schedule, 10% caption dropout, EMA)
  sibling     a second, narrower UNet on other pictures against the frozen text encoder (transfer target)
  flow        `toy-flow`: an SD3 transformer trained by rectified flow against the frozen text encoder
  meters      defect-meter thresholds from clean pictures, rendered and through the VAE; floor and recall
  judges      preference judge (CLIPModel), independent judge (CNN + bag of words), classifier, captioner
The judges see half their pictures through the VAE, as real preference models are trained on generated images.
Results are reproducible up to float summation order (thread count); run time on 2 CPU cores is in
`recipe.json` and docs/toyworld.md.

One file on purpose: it is the reproducible recipe of the shipped weights, read top to bottom stage by stage;
the networks, data and meters it trains are the toy world's other modules.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from renegx.files import atomic_write_json
from renegx.toyworld import paths
from renegx.toyworld.architectures import build_text_encoder, build_unet, build_vae
from renegx.toyworld.meters import meter_readings
from renegx.toyworld.networks import HEADS, AttributeNet, IndependentJudge, save_module, words_of
from renegx.toyworld.render import render_batch
from renegx.toyworld.scene import DEFECTS, OVERDONE, Scene, caption, sample_scene
from renegx.toyworld.tokenizer import MAX_LENGTH, load_tokenizer, write_tokenizer_files

RECIPE_VERSION = 5
RECIPE = {
    "version": RECIPE_VERSION,
    "prompts": {"heldout_seed": 1000, "heldout": 64, "train_seed": 2000, "train": 512},
    "vae": {"seed": 0, "pictures": 40000, "steps": 1500, "batch": 32, "lr": 1e-3, "kl": 1e-6},
    "generator": {
        "seed": 0,
        "pictures": 40000,
        "steps": 3000,
        "batch": 64,
        "lr": 1e-3,
        "warmup": 200,
        "caption_dropout": 0.1,
        "ema": 0.999,
    },
    "sibling": {
        "seed": 10,
        "pictures": 40000,
        "steps": 2000,
        "batch": 64,
        "lr": 1e-3,
        "warmup": 200,
        "caption_dropout": 0.1,
        "ema": 0.999,
        "channels": [48, 96],
    },
    "flow": {
        "seed": 20,
        "pictures": 20000,
        "steps": 3500,
        "batch": 32,
        "lr": 1e-3,
        "warmup": 200,
        "caption_dropout": 0.1,
        "ema": 0.999,
        "layers": 4,
        "heads": 4,
    },
    "meters": {"seed": 5, "pictures": 2000, "quantile": 0.01, "overdone_quantile": 0.0, "floor_seed": 50},
    "judges": {
        "preference": {"seed": 1, "pictures": 16000, "steps": 1500, "batch": 64, "lr": 1e-3},
        "independent": {"seed": 2, "pictures": 16000, "steps": 1500, "batch": 64, "lr": 1e-3},
        "classifier": {"seed": 3, "pictures": 16000, "steps": 1200, "batch": 64, "lr": 2e-3},
        "captioner": {"seed": 4, "pictures": 16000, "steps": 1200, "batch": 64, "lr": 2e-3},
    },
}
STAGES = ("prompts", "vae", "generator", "sibling", "flow", "meters", "judges")


def recipe_hash(recipe: dict = RECIPE) -> str:
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:16]


def log(message: str) -> None:
    print(f"[toyworld {time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------- data


def scenes(seed: int, count: int) -> list[Scene]:
    rng = np.random.default_rng(seed)
    return [sample_scene(rng) for _ in range(count)]


def pictures(scene_list: list[Scene], seed: int) -> torch.Tensor:
    """`(N, 3, 32, 32)` float in [0, 1]."""
    return torch.from_numpy(render_batch(scene_list, seed)).permute(0, 3, 1, 2).float() / 255.0


def clean_and_defective(seed: int, count: int) -> tuple[list[Scene], torch.Tensor, torch.Tensor]:
    """The same content drawn clean and with one or two defects: the judges' preference pairs."""
    rng = np.random.default_rng(seed + 100)
    clean = [Scene(s.shape, s.colour, s.size, s.position, s.background) for s in scenes(seed, count)]
    broken = []
    for s in clean:
        picked = rng.choice(DEFECTS, size=1 + int(rng.random() < 0.3), replace=False)
        broken.append(
            Scene(s.shape, s.colour, s.size, s.position, s.background, tuple(sorted(picked.tolist())))
        )
    return clean, pictures(clean, seed), pictures(broken, seed + 1)


def prompt_sets(recipe: dict) -> tuple[list[str], list[str]]:
    """(held-out, training) prompts: plain captions, unique, disjoint."""

    def unique(seed: int, count: int, exclude: set[str]) -> list[str]:
        rng, out = np.random.default_rng(seed), []
        while len(out) < count:
            text = caption(sample_scene(rng), rng, mention_defects=False)
            if text not in exclude and text not in out:
                out.append(text)
        return out

    settings = recipe["prompts"]
    heldout = unique(settings["heldout_seed"], settings["heldout"], set())
    return heldout, unique(settings["train_seed"], settings["train"], set(heldout))


def through_vae(vae, images: torch.Tensor, share: float, seed: int) -> torch.Tensor:
    """`images` with a random `share` of them replaced by their VAE reconstruction."""
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.rand(images.shape[0], generator=generator) < share
    out = images.clone()
    with torch.no_grad():
        for index in chosen.nonzero().flatten().split(256):
            batch = images[index] * 2 - 1
            out[index] = (vae.decode(vae.encode(batch).latent_dist.mean).sample.clamp(-1, 1) + 1) / 2
    return out


def _staged(folder: Path) -> Path:
    """A fresh `<folder>.partial`; `_publish` renames it into place (a killed stage leaves no half folder)."""
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def _publish(partial: Path, folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    partial.rename(folder)


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * (step - warmup) / max(1, steps - warmup)))


def _train(
    params, steps: int, lr: float, loss_fn: Callable[[int], torch.Tensor], name: str, warmup: int = 100
):
    optimiser = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: _schedule(s, steps, warmup))
    start, running = time.time(), 0.0
    for step in range(steps):
        loss = loss_fn(step)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimiser.step()
        scheduler.step()
        running = 0.98 * running + 0.02 * loss.item() if step else loss.item()
        if step % 250 == 0 or step == steps - 1:
            log(f"{name} step {step}/{steps} loss {running:.4f} ({time.time() - start:.0f} s)")


# ---------------------------------------------------------------- stages


def build_prompts(out: Path, recipe: dict) -> None:
    heldout, train = prompt_sets(recipe)
    atomic_write_json(out / "prompts_heldout.json", heldout)
    atomic_write_json(out / "prompts_train.json", train)


def build_vae_stage(out: Path, recipe: dict) -> None:
    settings = recipe["vae"]
    images = pictures(scenes(settings["seed"], settings["pictures"]), settings["seed"]) * 2 - 1
    vae = build_vae(settings["seed"])
    rng = torch.Generator().manual_seed(settings["seed"])

    def loss_fn(step: int) -> torch.Tensor:
        batch = images[torch.randint(len(images), (settings["batch"],), generator=rng)]
        posterior = vae.encode(batch).latent_dist
        recon = vae.decode(posterior.sample(generator=rng)).sample
        error = recon - batch
        return error.pow(2).mean() + 0.5 * error.abs().mean() + settings["kl"] * posterior.kl().mean()

    vae.train()
    _train(list(vae.parameters()), settings["steps"], settings["lr"], loss_fn, "vae")
    vae.eval()
    with torch.no_grad():
        latents = torch.cat([vae.encode(b).latent_dist.mean for b in images[:4096].split(256)])
    vae.register_to_config(scaling_factor=float(1.0 / latents.std()))
    partial = _staged(out / "generator" / "vae")
    vae.save_pretrained(partial)
    _publish(partial, out / "generator" / "vae")
    log(f"vae scaling factor {vae.config.scaling_factor:.4f}")


def _generator_data(settings: dict, heldout: set[str]) -> tuple[list[Scene], list[str]]:
    scene_list = scenes(settings["seed"], settings["pictures"])
    rng = np.random.default_rng(settings["seed"] + 7)
    captions = []
    for scene in scene_list:
        text = caption(scene, rng)
        while text in heldout:  # held-out prompts stay unseen by the generator
            text = caption(scene, rng)
        captions.append(text)
    return scene_list, captions


def _generator_latents(out: Path, settings: dict):
    """The generator's training set as VAE latents with captions, the generator that drew them, the VAE."""
    from diffusers import AutoencoderKL

    heldout = set(json.loads((out / "prompts_heldout.json").read_text()))
    scene_list, captions = _generator_data(settings, heldout)
    vae = AutoencoderKL.from_pretrained(out / "generator" / "vae").eval()
    images = pictures(scene_list, settings["seed"]) * 2 - 1
    generator = torch.Generator().manual_seed(settings["seed"])
    with torch.no_grad():
        latents = (
            torch.cat([vae.encode(b).latent_dist.sample(generator=generator) for b in images.split(256)])
            * vae.config.scaling_factor
        )
    return latents, captions, generator, vae


def _ema_step(ema_params: list[torch.Tensor], params: list[torch.Tensor], step: int, ema: float) -> None:
    """Move the EMA copies towards `params`, the decay warming up to `ema`."""
    if step:
        decay = min(ema, (1 + step) / (10 + step))
        torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - decay)


def _train_denoiser(
    models: torch.nn.ModuleDict,
    tokenizer,
    latents: torch.Tensor,
    captions: list[str],
    settings: dict,
    generator: torch.Generator,
    name: str,
) -> None:
    """ε-prediction on the SD noise schedule with caption dropout; trains `models`' trainable parameters
    (the UNet, and the text encoder when it requires grad) and leaves their EMA in place."""
    from diffusers import DDPMScheduler

    unet, text_encoder = models["unet"], models["text_encoder"]
    token_ids, empty = _token_ids(tokenizer, captions), _token_ids(tokenizer, [""])[0]
    alphas = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear").alphas_cumprod
    params = [p for p in models.parameters() if p.requires_grad]
    ema_params = [p.detach().clone() for p in params]

    def loss_fn(step: int) -> torch.Tensor:
        _ema_step(ema_params, params, step, settings["ema"])
        index = torch.randint(len(latents), (settings["batch"],), generator=generator)
        batch_ids = token_ids[index].clone()
        dropped = torch.rand(len(index), generator=generator) < settings["caption_dropout"]
        batch_ids[dropped] = empty
        t = torch.randint(0, len(alphas), (len(index),), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents[index] + (1 - a).sqrt() * noise
        prediction = unet(noisy, t, text_encoder(batch_ids)[0]).sample
        return F.mse_loss(prediction, noise)

    models.train()
    _train(params, settings["steps"], settings["lr"], loss_fn, name, settings["warmup"])
    with torch.no_grad():
        torch._foreach_copy_(params, ema_params)  # ship the EMA weights
    models.eval()


def _token_ids(tokenizer, texts: list[str]) -> torch.Tensor:
    return tokenizer(
        texts, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids


def build_generator_stage(out: Path, recipe: dict) -> None:
    from diffusers import StableDiffusionPipeline

    from renegx.tiny import sd_ddim_scheduler

    settings = recipe["generator"]
    latents, captions, generator, vae = _generator_latents(out, settings)
    tokenizer_dir = _staged(out / "generator_tokenizer")
    write_tokenizer_files(tokenizer_dir)
    tokenizer = load_tokenizer(tokenizer_dir)
    text_encoder = build_text_encoder(
        len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id, settings["seed"]
    )
    unet = build_unet(settings["seed"] + 1)
    models = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    _train_denoiser(models, tokenizer, latents, captions, settings, generator, "generator")
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=sd_ddim_scheduler(),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    partial = _staged(out / "generator")
    pipe.save_pretrained(partial)
    shutil.rmtree(tokenizer_dir)
    _publish(partial, out / "generator")


def build_sibling_stage(out: Path, recipe: dict) -> None:
    """A second, narrower UNet trained on other pictures against the generator's frozen text encoder: the
    transfer target (a learned negative lives in the text encoder's space, so it should carry over)."""
    from transformers import CLIPTextModel

    settings = recipe["sibling"]
    latents, captions, generator, _ = _generator_latents(out, settings)
    tokenizer = load_tokenizer(out / "generator" / "tokenizer")
    text_encoder = CLIPTextModel.from_pretrained(out / "generator" / "text_encoder").requires_grad_(False)
    unet = build_unet(settings["seed"] + 1, tuple(settings["channels"]))
    models = torch.nn.ModuleDict({"unet": unet, "text_encoder": text_encoder})
    _train_denoiser(models, tokenizer, latents, captions, settings, generator, "sibling")
    partial = _staged(out / "sibling_unet")
    unet.to(torch.float16).save_pretrained(partial)  # half the bytes in the repository; loaded as float32
    _publish(partial, out / "sibling_unet")


def build_flow_stage(out: Path, recipe: dict) -> None:
    """`toy-flow`: an `SD3Transformer2DModel` trained by rectified flow (SD3's: `x_t = (1 − σ) x0 + σ ε`,
    target velocity `ε − x0`, timestep `1000 σ`, σ logit-normal) on other pictures, conditioned exactly as
    `StableDiffusion3Pipeline.encode_prompt` conditions it on the frozen toy text encoder; EMA weights, stored
    in float16 (loaded as float32)."""
    from diffusers import StableDiffusion3Pipeline

    from renegx.toyworld.architectures import FLOW_T5_ROWS, build_flow_transformer, flow_components

    settings = recipe["flow"]
    latents, captions, generator, _ = _generator_latents(out, settings)
    transformer = build_flow_transformer(settings["seed"] + 1, settings["layers"], settings["heads"])
    pipe = StableDiffusion3Pipeline(**flow_components(out / "generator", transformer))
    texts = ["", *dict.fromkeys(captions)]  # each distinct caption encoded once; 0: the dropped caption
    with torch.no_grad():
        encoded = [
            pipe.encode_prompt(
                prompt=chunk,
                prompt_2=None,
                prompt_3=None,
                do_classifier_free_guidance=False,
                max_sequence_length=FLOW_T5_ROWS,
            )
            for chunk in [texts[i : i + 256] for i in range(0, len(texts), 256)]
        ]
    embeds, pooled = torch.cat([e[0] for e in encoded]), torch.cat([e[2] for e in encoded])
    row = {text: i for i, text in enumerate(texts)}
    caption_rows = torch.tensor([row[text] for text in captions])
    params = list(transformer.parameters())
    ema_params = [p.detach().clone() for p in params]

    def loss_fn(step: int) -> torch.Tensor:
        _ema_step(ema_params, params, step, settings["ema"])
        index = torch.randint(len(latents), (settings["batch"],), generator=generator)
        dropped = torch.rand(len(index), generator=generator) < settings["caption_dropout"]
        rows = caption_rows[index].masked_fill(dropped, 0)
        sigma = torch.sigmoid(torch.randn(len(index), generator=generator))
        noise = torch.randn(latents[index].shape, generator=generator)
        s = sigma.view(-1, 1, 1, 1)
        noisy = (1 - s) * latents[index] + s * noise
        velocity = transformer(
            noisy, encoder_hidden_states=embeds[rows], pooled_projections=pooled[rows], timestep=1000 * sigma
        ).sample
        return F.mse_loss(velocity, noise - latents[index])

    transformer.train()
    _train(params, settings["steps"], settings["lr"], loss_fn, "flow", settings["warmup"])
    with torch.no_grad():
        torch._foreach_copy_(params, ema_params)  # ship the EMA weights
    partial = _staged(out / "flow_transformer")
    transformer.eval().to(torch.float16).save_pretrained(partial)
    _publish(partial, out / "flow_transformer")


def build_meters_stage(out: Path, recipe: dict) -> None:
    """Each meter's threshold at the `quantile` of clean pictures it would flag (`overdone_quantile`, 0: the
    maximum, for the overdone kinds, which no clean picture may trip), taken on rendered scenes and on their
    VAE reconstructions both, the more lenient of the two: the renderer's crisp edges and the generator's
    softer best are held to one line. Recorded beside: the floor, the share of *fresh* clean pictures (other
    scenes, never used to calibrate) some meter flags, through the VAE (`floor`) and rendered
    (`floor_rendered`), and by kind; each defect's recall (any kind flagged) and how often its own kind
    catches it, through the VAE and rendered."""
    from diffusers import AutoencoderKL

    from renegx.toyworld.meters import DEFECT_METERS, KIND_OF_DEFECT, OVERDONE_KINDS, defect_flags, defective

    settings = recipe["meters"]
    vae = AutoencoderKL.from_pretrained(out / "generator" / "vae").eval()

    def both(images: torch.Tensor, seed: int) -> dict[str, torch.Tensor]:
        """The suffix a reading set is recorded under → its pictures: through the VAE, rendered."""
        return {"": through_vae(vae, images, 1.0, seed), "_rendered": images}

    clean, clean_images, _ = clean_and_defective(settings["seed"], settings["pictures"])
    calibration = [meter_readings(images) for images in both(clean_images, settings["seed"]).values()]
    thresholds = {}
    for kind, (reading, key, below) in DEFECT_METERS.items():
        q = settings["overdone_quantile"] if kind in OVERDONE_KINDS else settings["quantile"]
        lines = [float(torch.quantile(readings[reading], q if below else 1 - q)) for readings in calibration]
        thresholds[key] = min(lines) if below else max(lines)
    found = {}
    _, fresh, _ = clean_and_defective(settings["floor_seed"], settings["pictures"])
    for suffix, images in both(fresh, settings["floor_seed"]).items():
        readings = meter_readings(images)
        found[f"floor{suffix}"] = float(defective(readings, thresholds).float().mean())
        flags = defect_flags(readings, thresholds)
        found |= {f"floor_{kind}{suffix}": float(flag.float().mean()) for kind, flag in flags.items()}
    for index, defect in enumerate(DEFECTS + OVERDONE):
        broken = [Scene(s.shape, s.colour, s.size, s.position, s.background, (defect,)) for s in clean]
        drawn = pictures(broken, settings["seed"] + 1 + index)
        for suffix, images in both(drawn, settings["seed"]).items():
            readings = meter_readings(images)
            found[f"recall_{defect}{suffix}"] = float(defective(readings, thresholds).float().mean())
            found[f"caught_{defect}{suffix}"] = float(
                defect_flags(readings, thresholds)[KIND_OF_DEFECT[defect]].float().mean()
            )
    atomic_write_json(out / "meters.json", thresholds | found)
    log(f"meters {thresholds | found}")


def _judge_data(out: Path, settings: dict):
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "generator" / "vae").eval()
    clean, clean_images, broken_images = clean_and_defective(settings["seed"], settings["pictures"])
    clean_images = through_vae(vae, clean_images, 0.5, settings["seed"])
    broken_images = through_vae(vae, broken_images, 0.5, settings["seed"] + 1)
    rng = np.random.default_rng(settings["seed"] + 3)
    captions = [caption(s, rng) for s in clean]
    return clean, captions, clean_images, broken_images


def build_preference_judge(out: Path, settings: dict) -> None:
    from transformers import CLIPConfig, CLIPModel

    from renegx.rewards.preprocess import CLIP_MEAN, CLIP_STD, normalize
    from renegx.tiny import clip_vision_config
    from renegx.toyworld.architectures import text_encoder_config

    _, captions, clean_images, broken_images = _judge_data(out, settings)
    tokenizer = load_tokenizer(out / "generator" / "tokenizer")
    token_ids = tokenizer(
        captions, padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
    ).input_ids
    text = text_encoder_config(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id).to_dict()
    text["num_hidden_layers"] = 2
    vision = clip_vision_config(64, 3, 4, image_size=32, patch_size=4, projection_dim=64)
    torch.manual_seed(settings["seed"])
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision.to_dict(), projection_dim=64)).train()
    rng = torch.Generator().manual_seed(settings["seed"])

    def loss_fn(step: int) -> torch.Tensor:
        index = torch.randint(len(token_ids), (settings["batch"],), generator=rng)
        pixels = normalize(torch.cat([clean_images[index], broken_images[index]]), CLIP_MEAN, CLIP_STD)
        # the towers + projections exactly as `ClipScore` reads them
        image = F.normalize(
            model.visual_projection(model.vision_model(pixel_values=pixels).pooler_output), dim=-1
        )
        text = model.text_model(input_ids=token_ids[index]).pooler_output
        words = F.normalize(model.text_projection(text), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        clean, broken = image.chunk(2)
        logits = scale * clean @ words.T
        target = torch.arange(len(index))
        contrastive = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        preference = F.softplus(-scale * ((clean - broken) * words).sum(-1)).mean()
        return contrastive + preference

    _train(list(model.parameters()), settings["steps"], settings["lr"], loss_fn, "preference judge")
    partial = _staged(out / "judges" / "preference")
    model.eval().save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    atomic_write_json(
        partial / "preprocessor_config.json",
        {
            "image_mean": list(CLIP_MEAN),
            "image_std": list(CLIP_STD),
            "crop_size": 32,
            "size": {"shortest_edge": 32},
        },
    )
    _publish(partial, out / "judges" / "preference")


def build_independent_judge(out: Path, settings: dict) -> None:
    _, captions, clean_images, broken_images = _judge_data(out, settings)
    tokenizer = load_tokenizer(out / "generator" / "tokenizer")
    token_ids = words_of(tokenizer, captions)
    torch.manual_seed(settings["seed"])
    judge = IndependentJudge(len(tokenizer)).train()
    rng = torch.Generator().manual_seed(settings["seed"])

    def loss_fn(step: int) -> torch.Tensor:
        index = torch.randint(len(token_ids), (settings["batch"],), generator=rng)
        words = [token_ids[i] for i in index.tolist()]
        good = judge(clean_images[index], words)
        broken = judge(broken_images[index], words)
        mismatched = judge(clean_images[index.roll(1)], words)
        return F.softplus(broken - good).mean() + F.softplus(mismatched - good).mean()

    _train(list(judge.parameters()), settings["steps"], settings["lr"], loss_fn, "independent judge")
    partial = _staged(out / "judges" / "independent")
    save_module(judge, partial)
    _publish(partial, out / "judges" / "independent")


def build_attribute_net(out: Path, settings: dict, name: str) -> None:
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(out / "generator" / "vae").eval()
    scene_list = scenes(settings["seed"], settings["pictures"])
    images = through_vae(vae, pictures(scene_list, settings["seed"]), 0.5, settings["seed"])
    targets = {
        key: torch.tensor([values.index(getattr(s, key)) for s in scene_list])
        for key, values in HEADS.items()
    }
    defects = torch.tensor([[d in s.defects for d in DEFECTS] for s in scene_list], dtype=torch.float32)
    torch.manual_seed(settings["seed"])
    net = AttributeNet().train()
    rng = torch.Generator().manual_seed(settings["seed"])

    def loss_fn(step: int) -> torch.Tensor:
        index = torch.randint(len(images), (settings["batch"],), generator=rng)
        logits = net(images[index])
        loss = F.binary_cross_entropy_with_logits(logits["defects"], defects[index])
        return loss + sum(F.cross_entropy(logits[key], targets[key][index]) for key in HEADS)

    _train(list(net.parameters()), settings["steps"], settings["lr"], loss_fn, name)
    partial = _staged(out / "judges" / name)
    save_module(net, partial)
    _publish(partial, out / "judges" / name)


def build_judges_stage(out: Path, recipe: dict) -> None:
    settings = recipe["judges"]
    build_preference_judge(out, settings["preference"])
    build_independent_judge(out, settings["independent"])
    build_attribute_net(out, settings["classifier"], "classifier")
    build_attribute_net(out, settings["captioner"], "captioner")


BUILDERS = {
    "prompts": build_prompts,
    "vae": build_vae_stage,
    "generator": build_generator_stage,
    "sibling": build_sibling_stage,
    "flow": build_flow_stage,
    "meters": build_meters_stage,
    "judges": build_judges_stage,
}


def build_stages(out: Path, stages: list[str], recipe: dict = RECIPE) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "recipe.json"
    record = json.loads(record_path.read_text()) if record_path.exists() else {"seconds": {}}
    for stage in stages:
        start = time.time()
        log(f"stage {stage}")
        BUILDERS[stage](out, recipe)
        record["seconds"][stage] = round(time.time() - start, 1)
    record.update(
        version=recipe["version"],
        recipe=recipe,
        recipe_hash=recipe_hash(recipe),
        threads=torch.get_num_threads(),
    )
    atomic_write_json(record_path, record)
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m renegx.toyworld.build", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--out", type=Path, default=paths.WEIGHTS, help="output folder (default: the package's)"
    )
    parser.add_argument(
        "--stages", default=",".join(STAGES), help=f"comma-separated subset of {','.join(STAGES)}"
    )
    args = parser.parse_args(argv)
    stages = [s for s in args.stages.split(",") if s]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {','.join(unknown)}; known: {','.join(STAGES)}")
    record = build_stages(args.out, stages)
    log(f"done: {record['seconds']}")


if __name__ == "__main__":
    main()
