"""Transfer: one file drives any diffusers pipeline that shares its text encoder (ControlNet, AnimateDiff,
text-to-video, PixArt's T5), and is refused, in one line, by a pipeline whose text encoder differs."""

from functools import partial

import pytest
import torch
from assertions import assert_one_line_error
from diffusers import (
    AnimateDiffPipeline,
    ControlNetModel,
    MotionAdapter,
    PixArtAlphaPipeline,
    PixArtTransformer2DModel,
    StableDiffusionControlNetPipeline,
    TextToVideoSDPipeline,
    UNet3DConditionModel,
)
from transformers import CLIPTextModel, T5Config, T5EncoderModel

from renegx.negatives.embedding import EmbeddingError, NegativeEmbedding
from renegx.negatives.format import text_encoder_id
from renegx.tiny import TINY_HIDDEN, tiny_clip_text_config, tiny_sd_components

PROMPT = "a red circle"
_one_line_error = partial(assert_one_line_error, EmbeddingError)


@pytest.fixture(scope="module")
def sd_parts():
    with torch.random.fork_rng():
        return tiny_sd_components()


@pytest.fixture(scope="module")
def negative(tiny_backbone):
    """A file made for the tiny SD text encoder, provenance as training records it."""
    embeds = torch.randn(1, 77, TINY_HIDDEN, generator=torch.Generator().manual_seed(5))
    return NegativeEmbedding(embeds, metadata=tiny_backbone.text_encoder_metadata())


def _controlnet(parts):
    torch.manual_seed(4)
    pipe = StableDiffusionControlNetPipeline(
        **parts,
        controlnet=ControlNetModel.from_unet(parts["unet"]),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    control = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return pipe, {"image": control}


def _animatediff(parts):
    torch.manual_seed(4)
    adapter = MotionAdapter(
        block_out_channels=(32, 64),
        motion_layers_per_block=1,
        motion_norm_num_groups=8,
        motion_num_attention_heads=4,
    )
    pipe = AnimateDiffPipeline(**parts, motion_adapter=adapter, feature_extractor=None, image_encoder=None)
    return pipe, {"num_frames": 2}


def _text_to_video(parts):
    torch.manual_seed(4)
    unet = UNet3DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=1,
        sample_size=8,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock3D", "DownBlock3D"),
        up_block_types=("UpBlock3D", "CrossAttnUpBlock3D"),
        cross_attention_dim=TINY_HIDDEN,
        attention_head_dim=8,
        norm_num_groups=8,
    )
    pipe = TextToVideoSDPipeline(**{**parts, "unet": unet})
    return pipe, {"num_frames": 2}


BUILDERS = {"controlnet": _controlnet, "animatediff": _animatediff, "text-to-video": _text_to_video}


def _run(pipe, extra, **kwargs):
    out = pipe(
        PROMPT,
        num_inference_steps=2,
        guidance_scale=7.5,
        output_type="latent",
        generator=torch.Generator().manual_seed(0),
        **extra,
        **kwargs,
    )
    return out.frames if hasattr(out, "frames") else out.images


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_file_drives_a_pipeline_that_shares_the_text_encoder(kind, sd_parts, negative):
    pipe, extra = BUILDERS[kind](sd_parts)
    pipe.set_progress_bar_config(disable=True)
    kwargs = negative.for_pipeline(pipe, 1)
    assert list(kwargs) == ["negative_prompt_embeds"]
    with_helper = _run(pipe, extra, **kwargs)
    by_hand = _run(pipe, extra, negative_prompt_embeds=negative.embeds.clone())
    null = _run(pipe, extra)
    assert torch.isfinite(with_helper).all()
    assert torch.equal(with_helper, by_hand)
    assert not torch.allclose(with_helper, null)


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pipeline_with_another_text_encoder_is_refused(kind, sd_parts, negative):
    torch.manual_seed(9)
    config = tiny_clip_text_config()
    config.num_hidden_layers = 3
    deeper = CLIPTextModel(config)
    pipe, _ = BUILDERS[kind]({**sd_parts, "text_encoder": deeper})
    _one_line_error(
        lambda: negative.for_pipeline(pipe, 1),
        "embedding was made for text encoder clip_text_model/h32/l2/v514",
        "the pipeline's text_encoder is clip_text_model/h32/l3/v514",
    )


def test_file_without_a_recorded_encoder_is_checked_by_hidden_size_only(sd_parts):
    pipe, _ = _text_to_video(sd_parts)
    bare = NegativeEmbedding(torch.zeros(1, 77, TINY_HIDDEN))
    assert bare.for_pipeline(pipe, 2)["negative_prompt_embeds"].shape == (2, 77, TINY_HIDDEN)
    _one_line_error(
        lambda: NegativeEmbedding(torch.zeros(1, 77, 768)).for_pipeline(pipe, 1), "hidden size 768"
    )


@pytest.fixture(scope="module")
def pixart_pipe():
    """A tiny PixArt-α over a tiny T5 encoder; prompts go in as embeddings, so it needs no tokenizer."""
    torch.manual_seed(0)
    transformer = PixArtTransformer2DModel(
        sample_size=8,
        num_layers=2,
        patch_size=2,
        attention_head_dim=8,
        num_attention_heads=3,
        caption_channels=16,
        in_channels=4,
        cross_attention_dim=24,
        out_channels=8,
        attention_bias=True,
        activation_fn="gelu-approximate",
        num_embeds_ada_norm=1000,
        norm_type="ada_norm_single",
        norm_elementwise_affine=False,
        norm_eps=1e-6,
    )
    parts = tiny_sd_components()
    torch.manual_seed(1)
    encoder = T5EncoderModel(T5Config(vocab_size=100, d_model=16, d_kv=4, d_ff=37, num_layers=2, num_heads=4))
    pipe = PixArtAlphaPipeline(
        tokenizer=None,
        text_encoder=encoder,
        vae=parts["vae"],
        transformer=transformer,
        scheduler=parts["scheduler"],
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _pixart(pipe, **kwargs):
    prompt = torch.randn(1, 120, 16, generator=torch.Generator().manual_seed(1))
    return pipe(
        prompt_embeds=prompt,
        negative_prompt=None,
        prompt_attention_mask=torch.ones(1, 120, dtype=torch.long),
        num_inference_steps=2,
        output_type="latent",
        height=64,
        width=64,
        use_resolution_binning=False,
        generator=torch.Generator().manual_seed(0),
        **kwargs,
    ).images


def test_t5_file_without_a_mask_gets_the_documented_default(pixart_pipe, tmp_path):
    torch.save(torch.randn(1, 120, 16, generator=torch.Generator().manual_seed(2)), tmp_path / "pixart.bin")
    bare = NegativeEmbedding.load(tmp_path / "pixart.bin")
    kwargs = NegativeEmbedding(bare.embeds).for_pipeline(pixart_pipe, 1)  # no mask stored at all
    assert torch.equal(kwargs["negative_prompt_attention_mask"], torch.ones(1, 120, dtype=torch.long))
    by_hand = _pixart(
        pixart_pipe,
        negative_prompt_embeds=bare.embeds,
        negative_prompt_attention_mask=torch.ones(1, 120, dtype=torch.long),
    )
    assert torch.equal(_pixart(pixart_pipe, **kwargs), by_hand)
    assert text_encoder_id([pixart_pipe.text_encoder]) == "t5/h16/l2/v100"
