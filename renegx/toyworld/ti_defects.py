"""The toy world's community-style negative (`weights/negatives/ti_defects.safetensors`), made the way
EasyNegative-like files are made: a textual inversion learned on defective pictures.

    python -m renegx.toyworld.ti_defects   # ~3 minutes on one CPU thread; writes the shipped file

Textual inversion of a placeholder token on DEFECTIVE toy pictures. Every picture has one or two defects; its
caption names the content only, followed by the placeholder (A1111's "[filewords], [name]" template), so the
placeholder has to carry what the caption leaves out: the defects. The pictures go through the toy VAE; the
loss is the standard ε-prediction loss on the generator's noise schedule; the UNet and the text encoder are
frozen and only the placeholder's input vectors train, starting from the embedding of "*" (A1111's default
initialisation text). The result is written in the A1111 `.safetensors` layout (`emb_params`) with its recipe
in the metadata: `TI_RECIPE` below, seeded. Use it as `--negative ti:<file>`.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from renegx.negatives.textual_inversion import (
    PLACEHOLDER,
    TextualInversion,
    placeholder_id,
    placeholder_text,
    splice,
)
from renegx.toyworld.paths import SHIPPED as SHIPPED_WEIGHTS

SHIPPED = SHIPPED_WEIGHTS / "negatives" / "ti_defects.safetensors"
TI_RECIPE = {"seed": 0, "pictures": 4096, "vectors": 4, "steps": 400, "batch": 32, "lr": 5e-3}


def defective_pictures(seed: int, count: int) -> tuple[torch.Tensor, list[str]]:
    """`(count, 3, 32, 32)` pictures with one or two defects each, and captions that do not mention them."""
    from renegx.toyworld.build import clean_and_defective
    from renegx.toyworld.scene import caption

    clean, _, broken = clean_and_defective(seed, count)
    rng = np.random.default_rng(seed + 200)
    return broken, [caption(scene, rng, mention_defects=False) for scene in clean]


def learn(recipe: dict = TI_RECIPE) -> TextualInversion:
    """The placeholder's vectors learned by `recipe` on defective pictures; the recipe in the metadata."""
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
        "made_by": "python -m renegx.toyworld.ti_defects",
        "init_text": PLACEHOLDER,
        "template": "[caption], [placeholder]",
        "seconds": f"{time.perf_counter() - began:.0f}",
    }
    return TextualInversion([vectors.detach()], "toy-defects", metadata=metadata)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m renegx.toyworld.ti_defects", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", default=str(SHIPPED), help="the file to write (default: the shipped one)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    print(f"wrote {learn().save(path)}")


if __name__ == "__main__":
    main()
