"""Seeded tiny things the tests of several families build alike, without moving the global RNG."""

import torch

from renegx.models import load_backbone


def quiet_backbone(name: str):
    """The training backbone of tiny family `name`."""
    with torch.random.fork_rng():
        return load_backbone(name)


def quiet_pipeline(backbone):
    """`backbone`'s diffusers pipeline over the same modules, without progress bars."""
    pipe = backbone.pipeline()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def seeded_module(model: str, **options):
    """A `ReNegModule` on a tiny family with the tiny CLIP reward, built from seed 0."""
    from renegx.rewards import ClipScore
    from renegx.train.module import ReNegModule

    with torch.random.fork_rng():
        torch.manual_seed(0)
        return ReNegModule(reward=ClipScore(model="tiny"), model=model, **options)


def random_pooled_negative(rows: int, width: int, pooled: int, seed: int = 0):
    """Random `(1, rows, width)` token rows and a `(1, pooled)` vector, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, rows, width, generator=generator), torch.randn(1, pooled, generator=generator)


def assert_rollout_equals_pipeline(backbone, pipe, latents, negative, prompts, steps: int, **pipe_inputs):
    """renegx's guided DDIM rollout (w = 7.5) from `latents` with packed `negative` and `prompts` lands where
    `pipe` does when given the same conditioning as `pipe_inputs`."""
    from renegx.guidance import ddim_schedule, rollout_to

    expected = pipe(
        **pipe_inputs,
        latents=latents.clone(),
        num_inference_steps=steps,
        guidance_scale=7.5,
        output_type="latent",
    ).images
    schedule = ddim_schedule(backbone.scheduler, steps)
    ours = rollout_to(backbone.unet, schedule, latents, negative, prompts, 7.5, steps)
    assert torch.allclose(ours, expected, atol=1e-5, rtol=0)
