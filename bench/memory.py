"""The memory of one SD3.5-medium training step, estimated on the meta device: no weights, no compute.

    python -m bench.memory

The frozen models are built from SD3.5-medium's public config values (`bench.models.sd35_medium_components`)
on the meta device and set up as `train/sd35_medium_hpsv2` sets them: bfloat16 weights (text
encoders included), gradient checkpointing, x̂0 decoded at the reward's 224 px. The reward is HPSv2.1's
ViT-H-14 tower (`bench.models.vit_h_14_reward`), its weights float32 and its activations bfloat16 as under
the trainer's autocast. The step is renegx's own (`renegx.train.step.predicted_images`, then the reward
and the backward) at micro-batch 1. Counted:
- weights: every parameter's bytes;
- saved activations: what the grad step's forward keeps for its backward (`saved_tensors_hooks`, each
  storage once, weights left out), with checkpointing on — so the checkpointed blocks' inputs are not in it;
  they are added as one block input per transformer block;
- recomputed activations: a checkpointed transformer block's own, which the backward rebuilds one block at a
  time: the largest block's, measured with checkpointing off;
- attention as a GPU's fused kernel keeps it (the output and the log-sum-exp: `fused_attention`); traced
  through torch's reference path instead, the meta device would keep each attention matrix (1.9 GiB a layer
  at 1024 px);
- the prompt cache (SD3's 128 prompts of 334 × 4096 float32) and the negative with its gradient and AdamW.
Not counted: CUDA's context and the allocator's slack, and the no-grad rollout's transient activations (one
batched call of two samples at a time, freed before the grad step). A GPU measurement supersedes this.
"""

from __future__ import annotations

from unittest import mock

import torch

from bench.models import sd35_medium_components, vit_h_14_reward
from renegx.models.sd3 import SD3Backbone
from renegx.rewards.base import deferred_value_checks
from renegx.train.step import StepRecipe, predicted_images

GIB = 2**30
STEPS, GUIDANCE, REWARD_SIZE = 40, 4.5, 224


def _bytes(tensor: torch.Tensor) -> int:
    return tensor.numel() * tensor.element_size()


class SavedBytes:
    """Bytes of the tensors autograd saves for backward, each storage once, parameters left out."""

    def __init__(self, parameters):
        self.skip = {p.untyped_storage()._cdata for p in parameters}
        self.seen: set[int] = set()
        self.total = 0

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        key = tensor.untyped_storage()._cdata
        if key not in self.skip and key not in self.seen:
            self.seen.add(key)
            self.total += tensor.untyped_storage().nbytes()
        return tensor

    def hooks(self):
        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda tensor: tensor)


def fused_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
    """`scaled_dot_product_attention` through the flash kernel's op, which has a meta implementation; a mask
    (none in these models' grad step) goes the reference way."""
    if attn_mask is not None or kwargs.get("enable_gqa"):
        return REFERENCE_ATTENTION(query, key, value, attn_mask, dropout_p, is_causal, scale, **kwargs)
    flash = torch.ops.aten._scaled_dot_product_flash_attention
    return flash(query, key, value, dropout_p, is_causal, scale=scale)[0]


REFERENCE_ATTENTION = torch.nn.functional.scaled_dot_product_attention


def _grad_step(backbone: SD3Backbone, reward, counter: SavedBytes) -> None:
    """The grad step's forward and backward at micro-batch 1 on meta tensors, `counter` on its forward."""
    width, rows = backbone.hidden_size, backbone.sequence_length + 1
    negative = torch.zeros(1, rows, width, device="meta", requires_grad=True)
    prompt_embeds = torch.empty(1, rows, width, device="meta")
    x_t = torch.empty(1, *backbone.latent_shape, device="meta")
    recipe = StepRecipe(guidance_scale=GUIDANCE, decode_size=REWARD_SIZE, frozen_dtype="bfloat16")
    schedule = backbone.schedule(STEPS).to("meta")
    prompt = "a photo of a cat"  # its text features are cached, as in a run (never in the grad step)
    reward.text_features[prompt] = torch.empty(reward.model.config.projection_dim, device="meta")
    with mock.patch.object(torch.nn.functional, "scaled_dot_product_attention", fused_attention):
        with counter.hooks(), deferred_value_checks():  # as on an accelerator: no host read of a value
            images = predicted_images(backbone, schedule, recipe, x_t, STEPS - 1, negative, prompt_embeds)
            loss = -reward(images.to(torch.bfloat16), [prompt]).float().mean()
        loss.backward()  # the checkpointed blocks recompute here, with the same attention


def _largest_block(backbone: SD3Backbone, reward) -> int:
    """Saved bytes of the largest transformer block with checkpointing off (what a recompute rebuilds)."""
    network = backbone.unet.network
    network.gradient_checkpointing = False
    counter, sizes, start = SavedBytes(backbone.parameters()), [], {}
    for block in network.transformer_blocks:
        block.register_forward_pre_hook(lambda module, args: start.__setitem__("at", counter.total))
        block.register_forward_hook(lambda module, args, out: sizes.append(counter.total - start["at"]))
    _grad_step(backbone, reward, counter)
    network.gradient_checkpointing = True
    return max(sizes)


def estimate() -> dict[str, float]:
    """The estimate's parts in GiB (see the module docstring)."""
    with torch.device("meta"):
        backbone = SD3Backbone(sd35_medium_components(), "sd3.5-medium (meta)")
        reward = vit_h_14_reward()
    backbone.configure_performance(frozen_dtype="bfloat16", gradient_checkpointing=True)
    reward_weights = sum(_bytes(p) for p in reward.parameters())  # float32, as the trainer keeps them
    reward.to(torch.bfloat16)  # its activations as autocast makes them
    frozen = {
        "transformer": backbone.unet.network,
        "vae": backbone.vae,
        "text encoders": torch.nn.ModuleList(backbone.text_encoders),
    }
    parts = {f"weights: {name}": sum(_bytes(p) for p in m.parameters()) for name, m in frozen.items()}
    parts["weights: reward (float32)"] = reward_weights
    counter = SavedBytes([*backbone.parameters(), *reward.parameters()])
    _grad_step(backbone, reward, counter)
    parts["saved activations (checkpointed)"] = counter.total
    network = backbone.unet.network
    tokens = (backbone.latent_shape[1] // network.config.patch_size) ** 2 + backbone.sequence_length
    block_input = tokens * network.config.num_attention_heads * network.config.attention_head_dim * 2
    parts["checkpointed block inputs"] = len(network.transformer_blocks) * block_input
    parts["largest block, recomputed"] = _largest_block(backbone, reward)
    conditioning = (backbone.sequence_length + 1) * backbone.hidden_size * 4
    parts["prompt cache"] = backbone.prompt_cache_size * conditioning
    parts["negative, gradient, AdamW"] = 4 * conditioning
    return {name: size / GIB for name, size in parts.items()}


def main() -> None:
    parts = estimate()
    width = max(map(len, parts))
    for name, size in parts.items():
        print(f"{name:<{width}}  {size:7.2f} GiB")
    print(f"{'total':<{width}}  {sum(parts.values()):7.2f} GiB  (micro-batch 1; before CUDA's own overhead)")


if __name__ == "__main__":
    main()
