"""A community-style negative for the toy world, made the way EasyNegative-like files are made, and measured.

    python -m bench.textual_inversion_toy --learn   # ~3 minutes on one CPU thread; writes the shipped file
    python -m bench.textual_inversion_toy --learned runs/default/version_0/negative.safetensors

Learning (`--learn`): textual inversion of a placeholder token on DEFECTIVE toy pictures. Every picture has
one or two defects; its caption names the content only, followed by the placeholder (A1111's
"[filewords], [name]" template), so the placeholder has to carry what the caption leaves out: the defects.
The pictures go through the toy VAE; the loss is the standard ε-prediction loss on the generator's noise
schedule; the UNet and the text encoder are frozen and only the placeholder's input vectors train, starting
from the embedding of "*" (A1111's default initialisation text). The result is written in the A1111
`.safetensors` layout (`emb_params`) with its recipe in the metadata: `TI_RECIPE` below, seeded.

Measuring: null, the handcrafted negative prompt, the TI negative (`ti:FILE`, encoded as A1111 encodes a
negative prompt that names it) and, with `--learned`, a ReNeg embedding, on the toy world's held-out prompts
× the held-out seeds with the same noise, scored by both toy judges; differences to null are paired with
bootstrap 95% intervals that resample prompts. Where `renegx.toyworld.truth` is present, the ground truth
(analytic defect meters, attribute classifier) is reported too.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from renegx.files import atomic_write_json
from renegx.negatives.textual_inversion import (
    PLACEHOLDER,
    TextualInversion,
    placeholder_id,
    placeholder_text,
    splice,
)

SHIPPED = Path(__file__).resolve().parents[1] / "renegx/toyworld/weights/negatives/ti_defects.safetensors"
TI_RECIPE = {"seed": 0, "pictures": 4096, "vectors": 4, "steps": 400, "batch": 32, "lr": 5e-3}
JUDGES = ("toy-pref", "toy-independent")


def defective_pictures(seed: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """`(count, 3, 32, 32)` pictures with one or two defects each, and captions that do not mention them."""
    from renegx.toyworld.build import clean_and_defective
    from renegx.toyworld.scene import caption

    clean, _, broken = clean_and_defective(seed, count)
    rng = np.random.default_rng(seed + 200)
    return broken, [caption(scene, rng, mention_defects=False) for scene in clean]


def learn(recipe: dict = TI_RECIPE) -> TextualInversion:
    from renegx.models import load_backbone

    torch.manual_seed(recipe["seed"])
    generator = torch.Generator().manual_seed(recipe["seed"])
    backbone = load_backbone("toy")
    images, captions = defective_pictures(recipe["seed"], recipe["pictures"])
    with torch.no_grad():
        latents = torch.cat(
            [
                backbone.vae.encode(b * 2 - 1).latent_dist.sample(generator=generator)
                for b in images.split(256)
            ]
        )
    latents = latents * backbone.vae_scaling_factor
    count, tokenizer, encoder = recipe["vectors"], backbone.tokenizer, backbone.text_encoder
    placeholder = placeholder_id(tokenizer, count)
    texts = [f"{text}, {placeholder_text(count)}" for text in captions]
    ids = tokenizer(
        texts, padding="max_length", max_length=backbone.max_length, return_tensors="pt"
    ).input_ids
    embedding = encoder.get_input_embeddings()
    vectors = embedding.weight[placeholder].detach().repeat(count, 1).requires_grad_(True)
    optimiser = torch.optim.AdamW([vectors], lr=recipe["lr"], weight_decay=0.0)
    alphas = backbone.scheduler.alphas_cumprod
    began = time.perf_counter()
    for step in range(recipe["steps"]):
        index = torch.randint(len(latents), (recipe["batch"],), generator=generator)
        t = torch.randint(0, len(alphas), (len(index),), generator=generator)
        noise = torch.randn(latents[index].shape, generator=generator)
        a = alphas[t].view(-1, 1, 1, 1)
        noisy = a.sqrt() * latents[index] + (1 - a).sqrt() * noise
        with splice([(embedding, placeholder, vectors)]):
            states = encoder(ids[index])[0]
        loss = F.mse_loss(backbone.unet(noisy, t, states).sample, noise)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        if step % 100 == 0 or step == recipe["steps"] - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}  {time.perf_counter() - began:.0f}s", flush=True)
    metadata = {
        "base_model": "toy",
        "text_encoder_id": backbone.text_encoder_metadata()["text_encoder_id"],
        "recipe": json.dumps(recipe, sort_keys=True),
        "made_by": "python -m bench.textual_inversion_toy --learn",
        "init_text": PLACEHOLDER,
        "template": "[caption], [placeholder]",
        "seconds": f"{time.perf_counter() - began:.0f}",
    }
    return TextualInversion([vectors.detach()], "toy-defects", metadata=metadata)


def measure(ti_path: Path, learned: str | None, seeds: list[int], limit: int | None) -> dict:
    """Both judges (and the ground truth where available) for null, handcrafted, TI and learned."""
    from renegx.evaluate.held_out import draw_and_judge
    from renegx.evaluate.protocol import mean_delta
    from renegx.negatives.embedding import NegativeEmbedding
    from renegx.rewards import ToyPreference
    from renegx.toyworld import heldout_prompts
    from renegx.toyworld.scene import HANDCRAFTED_NEGATIVE
    from renegx.train.module import ReNegModule

    # The default run's sampling settings (renegx/configs/train/default.yaml): DDIM 20, w = 7.5.
    module = ReNegModule(reward=ToyPreference(), model="toy", num_inference_steps=20, stop_steps=7)
    backbone = module.backbone
    negatives = {
        "null": module.null_embeds,
        "handcrafted": backbone.encode_prompts([HANDCRAFTED_NEGATIVE]),
        "ti": TextualInversion.load(ti_path).negative(backbone).embeds,
    }
    if learned:
        negatives["learned"] = NegativeEmbedding.load(learned, hidden_size=backbone.hidden_size).embeds
    prompts = heldout_prompts()[:limit]
    pictures, scores, prompt_ids = draw_and_judge(module, negatives, prompts, seeds, JUDGES)
    summary = {"prompts": len(prompts), "seeds": seeds, "ti": str(ti_path), "learned": learned, "judges": {}}
    for judge, by_negative in scores.items():
        row = {name: float(values.mean()) for name, values in by_negative.items()}
        names = list(negatives)
        for later, name in enumerate(names):  # each negative against every one listed before it
            for other in names[:later]:
                delta = mean_delta(by_negative[name], by_negative[other], clusters=prompt_ids)
                row[f"{name}_minus_{other}"] = [delta.value, delta.low, delta.high]
        summary["judges"][judge] = row
    try:
        from renegx.toyworld.truth import format_truth_table, load_reader, meter_floor, truth_table
    except ImportError:
        summary["truth"] = None  # the ground-truth module is not in this tree
    else:
        read = load_reader()
        texts = [p for p in prompts for _ in seeds]
        readings = {name: read(images, texts) for name, images in pictures.items()}
        summary["truth"] = truth_table(readings, prompt_ids, baseline="null")
        summary["truth_text"] = format_truth_table(summary["truth"], meter_floor())
        if learned:  # the comparison community negatives are up against: TI vs ReNeg
            versus_ti = truth_table({k: readings[k] for k in ("ti", "learned")}, prompt_ids, baseline="ti")
            summary["truth_learned_minus_ti"] = versus_ti["learned"]
            summary["truth_text"] += "\n" + format_truth_table(versus_ti, baseline="ti").splitlines()[-1]
    return summary


def format_judges(summary: dict) -> str:
    lines = []
    for judge, row in summary["judges"].items():
        lines.append(judge + ": " + "  ".join(f"{k} {v:.4f}" for k, v in row.items() if isinstance(v, float)))
        for key, (value, low, high) in ((k, v) for k, v in row.items() if isinstance(v, list)):
            lines.append(f"    {key:<26}{value:+.4f} [{low:+.4f}, {high:+.4f}]")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.textual_inversion_toy", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--learn", action="store_true", help="learn the TI negative and write it to --ti")
    parser.add_argument("--ti", default=str(SHIPPED), help="the TI file to write (--learn) and measure")
    parser.add_argument("--learned", help="a ReNeg embedding for the toy model to compare as well")
    parser.add_argument("--seeds", default="100000,100001", help="the held-out seeds (the default run's)")
    parser.add_argument("--prompts", type=int, help="only the first N held-out prompts (default: all 64)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="runs/textual_inversion_toy", help="folder for summary.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.ti)
    if args.learn:
        path.parent.mkdir(parents=True, exist_ok=True)
        print(f"wrote {learn().save(path)}")
    summary = measure(path, args.learned, [int(s) for s in args.seeds.split(",")], args.prompts)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out) / "summary.json", summary)
    seeds = len(summary["seeds"])
    print(f"\n{summary['prompts']} held-out prompts × {seeds} seeds, the same noise for every negative")
    print(format_judges(summary))
    print(summary.get("truth_text") or "ground truth: renegx.toyworld.truth is not in this tree; judges only")


if __name__ == "__main__":
    main()
