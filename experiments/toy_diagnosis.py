"""Why a learned negative does or does not make toy-world pictures better: curves, headroom, judge–truth.

    python -m experiments.toy_diagnosis curves --steps 250 --lr 0.04 --negative-from 0.5  # the default
    python -m experiments.toy_diagnosis curves --steps 250 --train-on novel --split novel  # text never seen
    python -m experiments.toy_diagnosis curves --steps 250 --lr 0.04 --negative-from 0.5 --null-pull 0.12 \
        --train-on rest --split train           # pulled to the null, read on captions it did not train on
    python -m experiments.toy_diagnosis curves --steps 150 --reward-on final         # finished pictures
    python -m experiments.toy_diagnosis headroom --steps 250                         # an oracle reward
    python -m experiments.toy_diagnosis agreement --embedding runs/default/version_0/negative.safetensors
    python -m experiments.toy_diagnosis sensitivity --prompts 256                    # what each judge sees
    python -m experiments.toy_diagnosis compare --embedding FILE --split novel       # one embedding vs null

`curves` trains an embedding as the default config does (toy model, `toy-pref`, DDIM 20, w = 7.5, the module's
own training step, AdamW with cosine decay; rate and window from `--lr` and `--negative-from`, whose defaults
are the diagnosis's baseline: lr 0.01 at every step) and every `--every` steps draws the evaluation prompts ×
seeds with the null and the current embedding from the same noise: both judges' gains and the ground truth
(`renegx.toyworld.truth`: defective share by kind, adherence) with paired 95% intervals over prompts, one JSON
line each. `headroom` does the same against an oracle: differentiable versions of the meters and the attribute
classifier, the very things the ground truth reads. It answers how far *any* negative embedding can move the
ground truth; it is a diagnosis, never a reward to ship. `agreement` reads pictures of null and the given
embedding drawn from the same noise: how often each judge orders a pair as the ground truth does, and which
image properties (saturation, contrast, size, noise, distance from the centre, background brightness) the
embedding changes, and which background the classifier reads where the prompt names another. `sensitivity`
renders clean scenes captioned with every attribute and counts how often each judge prefers the described
picture to the same layout with one attribute swapped or one defect added (`--prompts` scenes). `compare`
draws a saved embedding (from its own `negative_from`) and the null on the split: the same table row as
`curves`, without training.

Splits (`--split`, `--train-on`): `renegx.toyworld.splits`. Choices are made on `train` and `novel`;
`heldout` checks once.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections import Counter

import numpy as np
import torch
import torch.nn.functional as F

from experiments.same_noise import JUDGES, Evaluation
from renegx.evaluate.image_stats import saturation
from renegx.guidance import guided_output
from renegx.models.backbone import decode_latents
from renegx.rewards import Reward, ToyIndependentJudge, ToyPreference
from renegx.toyworld import load_attribute_net, meter_thresholds
from renegx.toyworld.meters import (
    background_colour,
    centroid,
    colour_contrast,
    noise_energy,
    shape_mask,
    sharpness,
)
from renegx.toyworld.networks import HEADS, at_toy_resolution
from renegx.toyworld.scene import named_attributes
from renegx.toyworld.splits import SPLITS, prompts_of_split, training_prompts
from renegx.train.module import ReNegModule
from renegx.train.step import draw_stops, initial_latents


# -- the oracle: differentiable meters and classifier (headroom only) ------------------------------------
def _soft_mask(images: torch.Tensor) -> torch.Tensor:
    distance = (images - background_colour(images)[..., None, None]).norm(dim=1)
    top = torch.quantile(distance.flatten(1), 0.96, dim=1).clamp_min(1e-6)[:, None, None]
    return torch.sigmoid((distance - 0.5 * top) / (0.08 * top))


def _soft_border_contact(images: torch.Tensor) -> torch.Tensor:
    mask = _soft_mask(images)
    ring = torch.zeros_like(mask[0])
    ring[0, :] = ring[-1, :] = ring[:, 0] = ring[:, -1] = 1
    return (mask * ring).sum((1, 2)) / mask.sum((1, 2)).clamp_min(1).sqrt()


def _soft_stray_pixels(images: torch.Tensor, tolerance: float = 0.12) -> torch.Tensor:
    background, mask = background_colour(images), _soft_mask(images).flatten(1)
    flat = images.flatten(2)
    shape = (flat * mask[:, None]).sum(2) / mask.sum(1, keepdim=True).clamp_min(1)
    direction = shape - background
    along = ((flat - background[..., None]) * direction[..., None]).sum(1)
    along = along / direction.pow(2).sum(1, keepdim=True).clamp_min(1e-6)
    nearest = background[..., None] + along.clamp(0, 1)[:, None] * direction[..., None]
    return torch.sigmoid(((flat - nearest).norm(dim=1) - tolerance) / 0.03).mean(1)


class GroundTruthOracle(Reward):
    """log p(named attributes) from the classifier minus a softplus penalty per meter past its threshold."""

    name = "ground-truth-oracle"

    def __init__(self):
        super().__init__()
        self.thresholds = meter_thresholds()
        self.classifier = load_attribute_net("classifier")
        self.freeze()

    def score(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        x, t = at_toy_resolution(images.float().clamp(0, 1)), self.thresholds
        penalty = (
            F.softplus((t["sharpness_min"] - sharpness(x)) / (0.1 * t["sharpness_min"]))
            + F.softplus((noise_energy(x) - t["noise_energy_max"]) / (0.1 * t["noise_energy_max"]))
            + F.softplus((t["contrast_min"] - colour_contrast(x)) / (0.1 * t["contrast_min"]))
            + F.softplus((_soft_border_contact(x) - t["border_contact_max"]) / 0.1)
            + F.softplus((_soft_stray_pixels(x) - t["stray_pixels_max"]) / 0.005)
        )
        logits = self.classifier(x)
        log_p = []
        for i, prompt in enumerate(prompts):
            asked = named_attributes(prompt)
            terms = [
                logits[key][i].log_softmax(-1)[HEADS[key].index(asked[key])] for key in HEADS if key in asked
            ]
            log_p.append(torch.stack(terms).sum() if terms else x.new_zeros(()))
        return torch.stack(log_p) - penalty


# -- measuring ---------------------------------------------------------------------------------------------
def _evaluation(args, module: ReNegModule) -> Evaluation:
    """The `--split`'s first `--prompts` prompts × `--seeds`."""
    seeds = [int(s) for s in args.seeds.split(",")]
    return Evaluation(module, prompts_of_split(args.split, args.prompts), seeds)


def _module(args, reward: Reward) -> ReNegModule:
    return ReNegModule(
        model="toy",
        reward=reward,
        num_inference_steps=20,
        stop_steps=args.stop_steps,
        lr=args.lr,
        rollout_stride=args.rollout_stride,
        negative_from=args.negative_from,
        null_pull=args.null_pull,
    )


def final_pictures(module: ReNegModule, prompts: list[str], latents: torch.Tensor) -> torch.Tensor:
    """The finished pictures of the guided DDIM chain from x_T `latents`, with the gradient through every
    step to the negative (the null guides the steps before `negative_from`): what the training step's
    one-step x̂0 stands in for, at about five times its cost here. UNet activations are recomputed in the
    backward pass (checkpointing)."""
    unet, schedule, w = module.backbone.unet, module.schedule, module.recipe.guidance_scale
    prompt_embeds = module.backbone.encode_prompts(prompts).expand(len(prompts), -1, -1)
    start, x = module.recipe.negative_start(len(schedule)), latents
    for index in range(len(schedule)):
        negative = module.negative_embeds if index >= start else module.null_embeds
        embeds = torch.cat([negative.expand(len(prompts), -1, -1), prompt_embeds])

        def guided(x, embeds, timestep=schedule.timesteps[index]):
            return unet(torch.cat([x, x]), timestep, encoder_hidden_states=embeds).sample

        out_n, out_c = torch.utils.checkpoint.checkpoint(guided, x, embeds, use_reentrant=False).chunk(2)
        x, _ = schedule.step(guided_output(out_n, out_c, w), index, x)
    return decode_latents(module.backbone.vae, x)


def train_and_measure(args, reward: Reward) -> list[dict]:
    """The default config's training loop (the module's step) with an evaluation every `--every` steps."""
    torch.manual_seed(args.seed)
    module = _module(args, reward)
    optimizer = torch.optim.AdamW([module.negative_embeds], lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))
    )
    evaluation = _evaluation(args, module)
    null = evaluation.measure(evaluation.draw(module.null_embeds))
    training = training_prompts(args.train_on, evaluation.texts)
    generator = torch.Generator().manual_seed(args.seed)
    rows, spent = [], 0.0
    for step in range(1, args.steps + 1):
        began = time.process_time()
        picks = torch.randint(len(training), (args.batch,), generator=generator).tolist()
        latents = initial_latents(module.backbone, args.batch, generator, module.device)
        prompts = [training[i] for i in picks]
        if args.reward_on == "final":
            loss = -reward(final_pictures(module, prompts, latents), prompts).mean()
        else:
            loss, _ = module.step_loss(
                prompts, latents, draw_stops(len(module.schedule), module.recipe, generator)
            )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        spent += time.process_time() - began
        if step % args.every == 0 or step == args.steps:
            learned = evaluation.measure(evaluation.draw(module.negative_embeds.detach()))
            row = {"step": step, "train_cpu_s": round(spent, 1), **evaluation.compare(null, learned)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    if args.save:
        from renegx.negatives.embedding import NegativeEmbedding

        metadata = {**module.export_metadata(), "train_steps": str(args.steps), "lr": str(args.lr)}
        NegativeEmbedding(module.negative_embeds.detach().clone(), metadata=metadata).save(args.save)
    return rows


def image_changes(images: torch.Tensor) -> dict[str, np.ndarray]:
    """Per picture: saturation, colour contrast, shape size (share of the frame), noise energy, the shape
    centre's distance from the middle of the frame and the background's brightness."""
    x = at_toy_resolution(images.float().clamp(0, 1))
    arrays = x.permute(0, 2, 3, 1).numpy()
    return {
        "saturation": np.array([saturation(a) for a in arrays]),
        "contrast": colour_contrast(x).numpy(),
        "size": shape_mask(x).float().mean((1, 2)).numpy(),
        "noise": noise_energy(x).numpy(),
        "off_centre": (centroid(x) - 0.5).norm(dim=1).numpy(),
        "background_brightness": background_colour(x).mean(1).numpy(),
    }


def _saved(args):
    """The saved `--embedding` and a module that draws it as the file says: from its negative_from on."""
    from renegx.negatives.embedding import NegativeEmbedding

    learned = NegativeEmbedding.load(args.embedding)
    module = _module(
        argparse.Namespace(**{**vars(args), "negative_from": learned.negative_from}), ToyPreference()
    )
    return learned, module


def compare(args) -> dict:
    """A saved embedding against null (or against `--baseline`, paired) on the split, from the same noise: the
    row `curves` prints."""
    from renegx.negatives.embedding import NegativeEmbedding

    learned, module = _saved(args)
    evaluation = _evaluation(args, module)
    reference, name = module.null_embeds, "null"
    if args.baseline:
        baseline = NegativeEmbedding.load(args.baseline)
        if baseline.negative_from != learned.negative_from:
            raise SystemExit(
                f"--baseline draws from {baseline.negative_from}, --embedding from {learned.negative_from}: "
                "a paired comparison needs one negative_from"
            )
        reference, name = baseline.embeds.float(), "baseline"
    measured = evaluation.measure(evaluation.draw(reference))
    row = evaluation.compare(measured, evaluation.measure(evaluation.draw(learned.embeds.float())))
    row = {
        "embedding": args.embedding,
        "split": args.split,
        f"{name}_defective": round(float(measured["defective"].mean()), 4),
        **{key.replace("_minus_null", f"_minus_{name}"): value for key, value in row.items()},
    }
    print(json.dumps(row), flush=True)
    return row


def agreement(args) -> dict:
    """Judge–truth agreement on pairs (null, embedding) from the same noise, and the image changes."""
    learned, module = _saved(args)
    evaluation = _evaluation(args, module)
    learned_embeds = learned.embeds.float()
    images = {"null": evaluation.draw(module.null_embeds), "learned": evaluation.draw(learned_embeds)}
    read = {name: evaluation.measure(pictures) for name, pictures in images.items()}
    # truth orders a pair when one picture is defective and the other not, or adheres and the other not
    truth = (read["null"]["defective"] - read["learned"]["defective"]) + (
        read["learned"]["adherence"] - read["null"]["adherence"]
    )
    decided = truth != 0
    result = {"pairs": len(truth), "pairs_truth_orders": int(decided.sum())}
    for judge in JUDGES:
        says = np.sign(read["learned"][judge] - read["null"][judge])
        result[f"{judge}_agrees_with_truth"] = float((says[decided] == np.sign(truth[decided])).mean())
    # where the prompt names a background: which one the classifier reads instead, with each negative
    classifier, named = (
        load_attribute_net("classifier"),
        [named_attributes(t).get("background") for t in evaluation.texts],
    )
    for name, pictures in images.items():
        shown = classifier.describe(at_toy_resolution(pictures.float().clamp(0, 1)))
        misses = Counter(
            f"{n} read as {r['background']}"
            for n, r in zip(named, shown, strict=True)
            if n and n != r["background"]
        )
        result[f"background_misses_{name}"] = dict(misses.most_common())
    changes = {name: image_changes(pictures) for name, pictures in images.items()}
    result["learned_minus_null"] = {
        key: float((changes["learned"][key] - changes["null"][key]).mean()) for key in changes["null"]
    }
    result["null_mean"] = {key: float(values.mean()) for key, values in changes["null"].items()}
    print(json.dumps(result, indent=1))
    return result


def sensitivity(args) -> dict:
    """What each judge sees, on rendered (not generated) pictures: for clean scenes captioned with every
    attribute, the share of pairs in which the judge scores the picture the caption describes above the same
    scene (the same layout draws) with one attribute swapped, or with one defect added (the caption silent
    on it), the overdone ones included (no judge was trained on those)."""
    from dataclasses import replace

    from renegx.toyworld.render import render_scene
    from renegx.toyworld.scene import BACKGROUNDS, COLOURS, DEFECTS, OVERDONE, POSITIONS, SHAPES, sample_scene

    judges = {"toy-pref": ToyPreference(), "toy-independent": ToyIndependentJudge()}
    choices = {
        "shape": SHAPES,
        "colour": list(COLOURS),
        "background": list(BACKGROUNDS),
        "position": list(POSITIONS),
    }
    rng = np.random.default_rng(args.seed)
    rows = {f"{a} swapped": [] for a in choices} | {f"{d} added": [] for d in DEFECTS + OVERDONE}
    for index in range(args.prompts):
        scene = replace(sample_scene(rng), defects=())
        where = POSITIONS[scene.position][1]
        text = f"a picture of a {scene.colour} {scene.shape} {where} on a {scene.background} background"
        variants = {
            f"{a} swapped": replace(
                scene, **{a: str(rng.choice([v for v in values if v != getattr(scene, a)]))}
            )
            for a, values in choices.items()
        } | {f"{d} added": replace(scene, defects=(d,)) for d in DEFECTS + OVERDONE}
        pictures = [scene, *variants.values()]
        images = np.stack([render_scene(p, np.random.default_rng([args.seed, index])) for p in pictures])
        batch = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            scores = {name: judge(batch, [text] * len(pictures)) for name, judge in judges.items()}
        for k, key in enumerate(variants, start=1):
            rows[key].append([float(scores[name][0] > scores[name][k]) for name in judges])
    result = {
        key: dict(zip(judges, np.mean(hits, axis=0).round(3).tolist(), strict=True))
        for key, hits in rows.items()
    }
    print(
        json.dumps({"pairs_per_row": args.prompts, "judge_prefers_the_described_picture": result}, indent=1)
    )
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("job", choices=("curves", "headroom", "agreement", "sensitivity", "compare"))
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--every", type=int, default=125)
    parser.add_argument("--stop-steps", type=int, default=7)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--rollout-stride", type=int, default=1, help="model.rollout_stride")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument(
        "--negative-from", type=float, default=0.0, help="model.negative_from: the null before this fraction"
    )
    parser.add_argument(
        "--null-pull", type=float, default=0.0, help="model.null_pull: λ of the pull towards the null"
    )
    parser.add_argument("--seed", type=int, default=0, help="the training seed")
    parser.add_argument("--split", choices=SPLITS, default="train")
    parser.add_argument(
        "--train-on",
        choices=("train", "rest", "novel", "both"),
        default="train",
        help="curves: the training split, the training split less the evaluation's prompts, novel phrasings "
        "(none of the evaluation's) or both",
    )
    parser.add_argument(
        "--reward-on",
        choices=("x0-hat", "final"),
        default="x0-hat",
        help="curves/headroom: the one-step x̂0 at a stop (the training step) or the finished picture, the "
        "gradient through the whole chain",
    )
    parser.add_argument("--prompts", type=int, default=64, help="evaluation prompts (sensitivity: scenes)")
    parser.add_argument("--seeds", default="5000,5001", help="evaluation seeds (fresh noise)")
    parser.add_argument(
        "--embedding", help="agreement, compare: the learned embedding to read (drawn from its negative_from)"
    )
    parser.add_argument(
        "--baseline", help="compare: a saved embedding to pair --embedding against, in place of the null"
    )
    parser.add_argument(
        "--save",
        help="curves/headroom: write the final embedding here (.safetensors, what `agreement` reads)",
    )
    parser.add_argument("--threads", type=int, default=None)
    return parser.parse_args(argv)


def main(argv: list[str] | None = None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.job == "sensitivity":
        return sensitivity(args)
    if args.job in ("agreement", "compare"):
        if not args.embedding:
            raise SystemExit(f"{args.job} needs --embedding FILE")
        return agreement(args) if args.job == "agreement" else compare(args)
    return train_and_measure(args, GroundTruthOracle() if args.job == "headroom" else ToyPreference())


if __name__ == "__main__":
    main()
