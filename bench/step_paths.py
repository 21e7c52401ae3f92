"""The training-step paths the speed benches compare: ReNeg's step written plainly (`NaiveStep`) and renegx's
(`RenegxStep`, the module's step with its switches), fed the same `Round`s."""

from __future__ import annotations

import contextlib
import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from bench.models import World
from renegx.guidance import rollout_to
from renegx.models.backbone import Backbone
from renegx.train.module import ReNegModule

LR = 5e-3


# -- the two paths -------------------------------------------------------------------------------------------
@dataclass
class Round:
    """One round's inputs, the same for every path: B prompts, x_T `(B, C, h, w)`, stop indices as drawn."""

    prompts: list[str]
    latents: torch.Tensor
    stops: list[int]


class NaiveStep:
    """ReNeg's training step written plainly, with two of renegx's savings as switches for the ablation."""

    def __init__(
        self, world: World, args, device, cache_prompts: bool = False, positive_no_grad: bool = False
    ):
        from diffusers import DDIMScheduler

        parts = copy.deepcopy(world.components)
        self.unet, self.vae, self.text_encoder = (
            parts[k].to(device) for k in ("unet", "vae", "text_encoder")
        )
        self.tokenizer, self.reward = parts["tokenizer"], copy.deepcopy(world.reward).to(device)
        for model in (self.unet, self.vae, self.text_encoder, self.reward):
            model.requires_grad_(False).eval()
        self.scheduler = DDIMScheduler.from_config(parts["scheduler"].config)
        self.scheduler.set_timesteps(args.num_inference_steps)
        self.guidance_scale, self.device = args.guidance_scale, device
        self.cache_prompts, self.positive_no_grad, self.cache = cache_prompts, positive_no_grad, {}
        self.negative = torch.nn.Parameter(self.encode([""]).clone())
        self.optimizer = torch.optim.AdamW([self.negative], lr=LR)
        if cache_prompts:
            self.encode(world.prompts)  # steady state: every prompt seen before
        self.stops_per_rollout, self.modules = 1, (self.unet, self.vae, self.text_encoder, self.reward)

    def encode(self, prompts: list[str]) -> torch.Tensor:
        if self.cache_prompts and all(p in self.cache for p in prompts):
            return torch.stack([self.cache[p] for p in prompts])
        length = self.tokenizer.model_max_length
        tokens = self.tokenizer(
            prompts, padding="max_length", max_length=length, truncation=True, return_tensors="pt"
        )
        ids = tokens.input_ids.to(self.device)
        with torch.no_grad():
            embeds = self.text_encoder(ids)[0]
        if self.cache_prompts:
            self.cache.update(zip(prompts, embeds, strict=True))
        return embeds

    def cfg_eps(self, x, t, negative, prompt_embeds):
        eps_n, eps_c = self.unet(torch.cat([x, x]), t, torch.cat([negative, prompt_embeds])).sample.chunk(2)
        return eps_n + self.guidance_scale * (eps_c - eps_n)

    def rollout(self, prompt_embeds, latents, stop: int) -> torch.Tensor:
        negative, x = self.negative.detach().expand(len(latents), -1, -1), latents
        with torch.no_grad():
            for t in self.scheduler.timesteps[:stop]:
                x = self.scheduler.step(self.cfg_eps(x, t, negative, prompt_embeds), t, x).prev_sample
        return x

    def loss(self, rnd: Round) -> torch.Tensor:
        stop, prompt_embeds = rnd.stops[0], self.encode(rnd.prompts)
        x_t = self.rollout(prompt_embeds, rnd.latents, stop)
        t, negative = self.scheduler.timesteps[stop], self.negative.expand(len(x_t), -1, -1)
        if self.positive_no_grad:
            with torch.no_grad():
                eps_c = self.unet(x_t, t, prompt_embeds).sample
            eps_n = self.unet(x_t, t, negative).sample
            eps = eps_n + self.guidance_scale * (eps_c - eps_n)
        else:
            eps = self.cfg_eps(x_t, t, negative, prompt_embeds)
        x0 = self.scheduler.step(eps, t, x_t).pred_original_sample
        images = ((self.vae.decode(x0 / self.vae.config.scaling_factor).sample + 1) / 2).clamp(0, 1)
        return -self.reward(images, rnd.prompts).mean()

    def rollout_step(self, rnd: Round):
        """A function taking one no-grad CFG rollout step from `rnd.latents` (prompts encoded beforehand)."""
        prompt_embeds = self.encode(rnd.prompts)
        return lambda: self.rollout(prompt_embeds, rnd.latents, 1)


class RenegxStep:
    """`ReNegModule.step_loss` over copies of the world's components, with the given module switches."""

    def __init__(self, world: World, args, device, **switches):
        self.module = ReNegModule(
            reward=copy.deepcopy(world.reward),
            model=Backbone(copy.deepcopy(world.components), world.name),
            guidance_scale=args.guidance_scale,
            num_inference_steps=args.num_inference_steps,
            stop_steps=args.stop_steps,
            lr=LR,
            **switches,
        ).to(device)
        self.module.backbone.encode_prompts(world.prompts)  # steady state: every prompt seen before
        self.optimizer = torch.optim.AdamW([self.module.negative_embeds], lr=LR)
        self.stops_per_rollout = self.module.hparams.stops_per_rollout
        self.negative = self.module.negative_embeds
        backbone = self.module.backbone
        self.unet = backbone.unet
        self.modules = (backbone.unet, backbone.vae, backbone.text_encoder, self.module.reward)

    def loss(self, rnd: Round) -> torch.Tensor:
        stops = sorted(rnd.stops[: self.stops_per_rollout])
        return self.module.step_loss(rnd.prompts, rnd.latents, stops)[0]

    def rollout_step(self, rnd: Round):
        """A function taking one no-grad CFG rollout step from `rnd.latents` (prompts encoded beforehand)."""
        module = self.module
        negative, prompt_embeds = module.negative_embeds.detach(), module.backbone.encode_prompts(rnd.prompts)
        unet, w = module.backbone.unet, module.hparams.guidance_scale
        return lambda: rollout_to(unet, module.schedule, rnd.latents, negative, prompt_embeds, w, 1)

    @contextlib.contextmanager
    def without_checkpointing(self):
        """Model FLOPs exclude the recomputation that checkpointing adds."""
        models = (self.module.backbone.unet, self.module.backbone.vae)
        if not self.module.hparams.gradient_checkpointing:
            yield
            return
        for model in models:
            model.disable_gradient_checkpointing()
        try:
            yield
        finally:
            for model in models:
                model.enable_gradient_checkpointing()


def train_step(step, rnd: Round) -> None:
    step.loss(rnd).backward()
    step.optimizer.step()
    step.optimizer.zero_grad(set_to_none=True)


def samples(step, rnd: Round) -> int:
    return len(rnd.prompts) * step.stops_per_rollout


def weight_bytes(step) -> int:
    return sum(t.numel() * t.element_size() for m in step.modules for t in [*m.parameters(), *m.buffers()])


def loss_and_grad(step, rnd: Round) -> tuple[float, torch.Tensor]:
    step.optimizer.zero_grad(set_to_none=True)
    loss = step.loss(rnd)
    loss.backward()
    grad = step.negative.grad.detach().float().clone()
    step.optimizer.zero_grad(set_to_none=True)
    return loss.item(), grad


def agreement(off, on, rnd: Round, exact: bool = True) -> tuple[str, bool]:
    """How far `on`'s loss and gradient are from `off`'s for the same inputs and the same embedding, and
    whether they agree: `exact` switches should agree up to float rounding (relative gradient error ≤ 1e-3).
    """
    with torch.no_grad():
        on.negative.copy_(off.negative)
    loss_off, grad_off = loss_and_grad(off, rnd)
    loss_on, grad_on = loss_and_grad(on, rnd)
    error = (grad_on - grad_off).norm() / grad_off.norm().clamp_min(1e-30)
    cosine = F.cosine_similarity(grad_on.flatten(), grad_off.flatten(), dim=0)
    agree = not exact or bool(error <= 1e-3)
    flag = "" if agree else "  <-- MISMATCH: not the same gradient"
    text = (
        f"|Δloss| {abs(loss_on - loss_off):.2e} (loss {loss_off:.4f}), gradient: relative error "
        f"{error:.2e}, cosine {cosine:.6f}{flag}"
    )
    return text, agree
