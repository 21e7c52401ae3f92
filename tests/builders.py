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


def run_card_snippet(folder, monkeypatch) -> dict:
    """Run the Python snippet of the model card in `folder` as a user copies it, from that folder; its
    namespace."""
    snippet = (folder / "README.md").read_text().split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    monkeypatch.chdir(folder)
    exec(snippet, namespace)
    return namespace


def assert_pooled_file_draws_as_by_hand(loaded, pipe, embeds, pooled, prompts: list[str]) -> None:
    """`loaded.for_pipeline` gives `pipe` exactly the pooled negative given by hand."""
    kwargs = loaded.for_pipeline(pipe, len(prompts))
    assert set(kwargs) == {"negative_prompt_embeds", "negative_pooled_prompt_embeds"}

    def run(**negative):
        generator = torch.Generator().manual_seed(0)
        return pipe(
            prompts, num_inference_steps=2, output_type="latent", generator=generator, **negative
        ).images

    count = len(prompts)
    by_hand = run(
        negative_prompt_embeds=embeds.expand(count, -1, -1),
        negative_pooled_prompt_embeds=pooled.expand(count, -1),
    )
    assert torch.equal(run(**kwargs), by_hand)


def quiet_trainer(**options):
    """A Lightning `Trainer` on the CPU without progress bar or model summary; `options` add the rest."""
    import lightning

    quiet = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}
    return lightning.Trainer(**quiet | options)
