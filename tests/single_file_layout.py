"""Test support: diffusers components written as one `.safetensors` in the original Stable Diffusion (LDM)
key layout, the way model sites ship fine-tunes, so that single-file loading can be tested on the toy and
tiny models. The mapping is the inverse of what diffusers' single-file loader reads, written out here and
checked by loading the files back (tests/test_single_file.py).

Original layout: the UNet under `model.diffusion_model.` (`input_blocks`, `middle_block`, `output_blocks`),
the VAE under `first_stage_model.` (`encoder.down.{i}.block.{j}`, `mid.attn_1`, ...), and the text encoders
as SD1.x (`cond_stage_model.transformer.text_model.`, the transformers layout) or SDXL (CLIP-L under
`conditioner.embedders.0.transformer.text_model.`, OpenCLIP-G under `conditioner.embedders.1.model.`).
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
SD_CLIP_PREFIX = "cond_stage_model.transformer.text_model."
SDXL_CLIP_L_PREFIX = "conditioner.embedders.0.transformer.text_model."
SDXL_OPEN_CLIP_PREFIX = "conditioner.embedders.1.model."

UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "time_emb_proj": "emb_layers.1",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "conv_shortcut": "skip_connection",
}
VAE_ATTENTION = {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}
OPEN_CLIP_LAYER = {
    "layer_norm1": "ln_1",
    "layer_norm2": "ln_2",
    "mlp.fc1": "mlp.c_fc",
    "mlp.fc2": "mlp.c_proj",
    "self_attn.out_proj": "attn.out_proj",
}


def _renamed(rest: str, names: dict[str, str]) -> str:
    """`rest` (what follows a block's prefix, e.g. `norm1.weight`) with its leading module renamed."""
    for old, new in names.items():
        if rest.startswith(old + "."):
            return new + rest[len(old) :]
    return rest


def _apply(state: dict[str, torch.Tensor], prefixes: list[tuple[str, str, dict]]) -> dict[str, torch.Tensor]:
    """Every key of `state` moved from its diffusers prefix to the original one (longest prefix first), its
    leading module renamed by that prefix's table; a key no prefix covers is an error, not a silent gap."""
    ordered = sorted(prefixes, key=lambda entry: len(entry[0]), reverse=True)
    out = {}
    for key, tensor in state.items():
        for old, new, names in ordered:
            if key.startswith(old):
                out[new + _renamed(key[len(old) :], names)] = tensor
                break
        else:
            raise KeyError(f"no original-layout name for {key}")
    return out


def unet_to_original(unet) -> dict[str, torch.Tensor]:
    """A `UNet2DConditionModel`'s weights in the LDM UNet layout (without the `model.diffusion_model.`)."""
    config = unet.config
    blocks, per_block = len(config.block_out_channels), config.layers_per_block
    keys = list(unet.state_dict())
    prefixes = [
        ("conv_in.", "input_blocks.0.0.", {}),
        ("time_embedding.linear_1.", "time_embed.0.", {}),
        ("time_embedding.linear_2.", "time_embed.2.", {}),
        ("add_embedding.linear_1.", "label_emb.0.0.", {}),
        ("add_embedding.linear_2.", "label_emb.0.2.", {}),
        ("conv_norm_out.", "out.0.", {}),
        ("conv_out.", "out.2.", {}),
        ("mid_block.resnets.0.", "middle_block.0.", UNET_RESNET),
        ("mid_block.attentions.0.", "middle_block.1.", {}),
        ("mid_block.resnets.1.", "middle_block.2.", UNET_RESNET),
    ]
    index = 1
    for block in range(blocks):
        for layer in range(per_block):
            prefixes.append(
                (f"down_blocks.{block}.resnets.{layer}.", f"input_blocks.{index}.0.", UNET_RESNET)
            )
            prefixes.append((f"down_blocks.{block}.attentions.{layer}.", f"input_blocks.{index}.1.", {}))
            index += 1
        if block < blocks - 1:
            prefixes.append((f"down_blocks.{block}.downsamplers.0.conv.", f"input_blocks.{index}.0.op.", {}))
            index += 1
    index = 0
    for block in range(blocks):
        for layer in range(per_block + 1):
            prefixes.append((f"up_blocks.{block}.resnets.{layer}.", f"output_blocks.{index}.0.", UNET_RESNET))
            prefixes.append((f"up_blocks.{block}.attentions.{layer}.", f"output_blocks.{index}.1.", {}))
            if layer == per_block and block < blocks - 1:
                attention = any(key.startswith(f"up_blocks.{block}.attentions.") for key in keys)
                slot = 2 if attention else 1
                prefixes.append(
                    (f"up_blocks.{block}.upsamplers.0.conv.", f"output_blocks.{index}.{slot}.conv.", {})
                )
            index += 1
    return _apply(unet.state_dict(), prefixes)


def vae_to_original(vae) -> dict[str, torch.Tensor]:
    """An `AutoencoderKL`'s weights in the LDM layout (without `first_stage_model.`); the mid-block
    attention's linear layers become the 1×1 convolutions the original stores."""
    blocks = len(vae.config.block_out_channels)
    prefixes = [
        ("encoder.conv_norm_out.", "encoder.norm_out.", {}),
        ("decoder.conv_norm_out.", "decoder.norm_out.", {}),
    ]
    for part in ("encoder", "decoder"):
        prefixes += [
            (f"{part}.mid_block.resnets.0.", f"{part}.mid.block_1.", {}),
            (f"{part}.mid_block.resnets.1.", f"{part}.mid.block_2.", {}),
            (f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1.", VAE_ATTENTION),
            (f"{part}.", f"{part}.", {}),  # conv_in, conv_out
        ]
    for block in range(blocks):
        up = blocks - 1 - block  # the original counts the decoder's blocks from the bottom
        prefixes += [
            (f"encoder.down_blocks.{block}.resnets.", f"encoder.down.{block}.block.", {}),
            (
                f"encoder.down_blocks.{block}.downsamplers.0.conv.",
                f"encoder.down.{block}.downsample.conv.",
                {},
            ),
            (f"decoder.up_blocks.{block}.resnets.", f"decoder.up.{up}.block.", {}),
            (f"decoder.up_blocks.{block}.upsamplers.0.conv.", f"decoder.up.{up}.upsample.conv.", {}),
        ]
    prefixes += [("quant_conv.", "quant_conv.", {}), ("post_quant_conv.", "post_quant_conv.", {})]
    state = _apply(vae.state_dict(), prefixes)
    state = {key.replace(".conv_shortcut.", ".nin_shortcut."): value for key, value in state.items()}
    for key, tensor in state.items():
        if ".mid.attn_1." in key and key.endswith(".weight") and tensor.ndim == 2:
            state[key] = tensor[:, :, None, None]
    return state


def clip_to_original(encoder) -> dict[str, torch.Tensor]:
    """A transformers CLIP text model's weights as the original stores CLIP-L: the transformers names under
    `text_model.` (without the file's `...transformer.text_model.` prefix)."""
    return {key.removeprefix("text_model."): tensor for key, tensor in encoder.state_dict().items()}


def open_clip_to_original(encoder) -> dict[str, torch.Tensor]:
    """A `CLIPTextModelWithProjection`'s weights in OpenCLIP's layout (without the file's
    `conditioner.embedders.1.model.`): `resblocks`, fused `in_proj` attention, the projection transposed."""
    state = {key.removeprefix("text_model."): tensor for key, tensor in encoder.state_dict().items()}
    out = {
        "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
        "positional_embedding": state.pop("embeddings.position_embedding.weight"),
        "ln_final.weight": state.pop("final_layer_norm.weight"),
        "ln_final.bias": state.pop("final_layer_norm.bias"),
        "text_projection": state.pop("text_projection.weight").T.contiguous(),
    }
    for layer in range(encoder.config.num_hidden_layers):
        old, new = f"encoder.layers.{layer}.", f"transformer.resblocks.{layer}."
        for kind in ("weight", "bias"):
            parts = [state.pop(f"{old}self_attn.{p}_proj.{kind}") for p in ("q", "k", "v")]
            out[f"{new}attn.in_proj_{kind}"] = torch.cat(parts)
        for key in [key for key in state if key.startswith(old)]:
            out[new + _renamed(key[len(old) :], OPEN_CLIP_LAYER)] = state.pop(key)
    if state:
        raise KeyError(f"no OpenCLIP name for {sorted(state)}")
    return out


def _prefixed(prefix: str, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {prefix + key: tensor.detach().contiguous() for key, tensor in state.items()}


def sd_single_file(components: dict) -> dict[str, torch.Tensor]:
    """An SD1.x checkpoint's tensors: UNet, VAE and its CLIP text encoder in the original layout."""
    return {
        **_prefixed(UNET_PREFIX, unet_to_original(components["unet"])),
        **_prefixed(VAE_PREFIX, vae_to_original(components["vae"])),
        **_prefixed(SD_CLIP_PREFIX, clip_to_original(components["text_encoder"])),
    }


def sdxl_single_file(components: dict) -> dict[str, torch.Tensor]:
    """An SDXL checkpoint's tensors: UNet, VAE, CLIP-L and OpenCLIP-G in the original layout."""
    return {
        **_prefixed(UNET_PREFIX, unet_to_original(components["unet"])),
        **_prefixed(VAE_PREFIX, vae_to_original(components["vae"])),
        **_prefixed(SDXL_CLIP_L_PREFIX, clip_to_original(components["text_encoder"])),
        **_prefixed(SDXL_OPEN_CLIP_PREFIX, open_clip_to_original(components["text_encoder_2"])),
    }


def write_single_file(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """`tensors` as one `.safetensors` file (each tensor its own storage, as safetensors requires)."""
    save_file({key: tensor.clone() for key, tensor in tensors.items()}, str(path))
    return Path(path)
