"""Parts the tiny flow-matching models share, built offline and seeded: a T5 encoder with a character-level
T5 tokenizer (SD3's third text encoder, FLUX's second) and a 16-channel VAE (both models' latent layout).

The tokenizer is a `transformers.T5Tokenizer` over a Unigram vocabulary of single characters in T5's layout
(`<pad>` 0, `</s>` 1, `<unk>` 2), so prompts tokenize without any download and every sequence ends with
`</s>` as T5's does. 64×64 pixels are 8×8 latents of 16 channels, as SD3's and FLUX's VAEs make 128×128.
"""

from __future__ import annotations

import torch

from renegx.tiny import TINY_RESOLUTION, autoencoder

TINY_T5_MAX_LENGTH = 512  # T5-XXL's tokenizer's; the pipelines pad to their own max_sequence_length
TINY_LATENT_CHANNELS = 16


def tiny_t5_tokenizer():
    """A `T5Tokenizer` of printable ASCII characters, with and without T5's word-start mark `▁`."""
    from transformers import T5Tokenizer

    characters = [chr(code) for code in range(33, 127)]
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    vocab += [(c, -3.0) for c in characters] + [("▁" + c, -3.5) for c in characters]
    return T5Tokenizer(vocab=vocab, extra_ids=0, model_max_length=TINY_T5_MAX_LENGTH)


def tiny_t5_encoder(seed: int, width: int):
    """A seeded two-layer `T5EncoderModel` of `width` over the tiny tokenizer's vocabulary, in eval mode (T5
    has dropout, which a model built from a config leaves on)."""
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=len(tiny_t5_tokenizer()),
        d_model=width,
        d_kv=8,
        d_ff=37,
        num_layers=2,
        num_heads=4,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return T5EncoderModel(config).eval()


def tiny_flow_vae(seed: int, scaling_factor: float, shift_factor: float):
    """A seeded `AutoencoderKL` of 16 latent channels at 8 pixels per latent, without the quant convs (as
    SD3's and FLUX's), with the model's `scaling_factor` and `shift_factor`."""
    torch.manual_seed(seed)
    return autoencoder(
        (16, 32, 32, 32),
        1,
        16,
        latent_channels=TINY_LATENT_CHANNELS,
        sample_size=TINY_RESOLUTION,
        scaling_factor=scaling_factor,
        shift_factor=shift_factor,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
