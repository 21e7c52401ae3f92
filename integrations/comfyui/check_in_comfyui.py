"""Run the ReNeg nodes inside a real ComfyUI checkout, offline (docs/comfyui.md, "Checking the pack in
ComfyUI"). Not part of the test suite: it needs ComfyUI's source and a virtual environment with ComfyUI's
requirements and renegx.

    .venv-comfy/bin/python integrations/comfyui/check_in_comfyui.py --comfyui /tmp/comfyui --work /tmp/check

Into `--work` (ComfyUI's `--base-directory`) it writes a tiny checkpoint in SD1.5's single-file layout that
ComfyUI's model detection reads as SD1.5 (random weights: ComfyUI's own UNet class at SD1.5's widths with one
level, a CLIP-L-sized text encoder, SD's VAE), renegx files of SD1.5's shapes in `models/reneg/`, and a link
to this pack in `custom_nodes/`. Each stage runs in a process of its own:

1. `reference`: without ComfyUI, the files, the text encoder's weights and its encoding of "" as diffusers
   makes it.
2. `prepare`: the checkpoint, and ComfyUI's model detection on it.
3. `serve`: ComfyUI's server on 127.0.0.1 loads the pack with its own loader; the example workflows (and one
   that must fail) are queued through its HTTP API and run by its own executor.
4. `inprocess`: ComfyUI imported, the pack loaded by `nodes.init_extra_nodes`; the conditioning beside
   `CLIPTextEncode`'s, the empty prompt beside the diffusers-style one, and a late negative sampled with every
   sampler × scheduler, recording which negative each model call receives.

The summary lands in `<work>/report.json`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

PACK = Path(__file__).resolve().parent
WORKFLOWS = PACK / "workflows"
CHECKPOINT = "tiny-sd15.safetensors"
TEXT_ENCODER_PREFIX = "cond_stage_model.transformer."
LATE_FROM = 0.5
STEPS = 10
PROMPT = "a photo of a cat"


# -- stage 0: the files --------------------------------------------------------------------------------------
def write_negatives(folder: Path) -> None:
    """SD1.5-shaped renegx files: a global negative, one that acts late, a bank, and an SDXL-shaped one."""
    import torch

    import renegx

    folder.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(0)

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    recorded = {"base_model": "tiny-sd15", "text_encoder_id": "clip_text_model/h768/l12/v49408"}
    renegx.NegativeEmbedding(randn(1, 77, 768), metadata=recorded).save(folder / "sd15.safetensors")
    late = {**recorded, "negative_from": str(LATE_FROM)}
    renegx.NegativeEmbedding(randn(1, 77, 768), metadata=late).save(folder / "sd15-late.safetensors")
    rows = renegx.NegativeEmbedding(randn(2, 77, 768), metadata=recorded)
    fallback = renegx.NegativeEmbedding(randn(1, 77, 768))
    renegx.EmbeddingBank(rows, [PROMPT, "a castle at dusk"], fallback).save(folder / "sd15-bank.safetensors")
    sdxl = renegx.NegativeEmbedding(randn(1, 77, 2048), pooled=randn(1, 1280))
    sdxl.save(folder / "sdxl.safetensors")


def reference_stage(work: Path) -> dict:
    """Without ComfyUI: the renegx files, a CLIP-L-sized text encoder with seeded random weights
    (transformers'), and its encoding of "" as diffusers makes it (BOS, then EOS to 77 tokens; last hidden
    state)."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPTextModel

    write_negatives(work / "models" / "reneg")
    torch.manual_seed(0)
    encoder = CLIPTextModel(clip_l_config())
    with torch.no_grad():
        for parameter in encoder.parameters():  # the checkpoint holds float16: encode with the same weights
            parameter.copy_(parameter.half().float())
        empty = encoder(torch.tensor([[49406] + [49407] * 76])).last_hidden_state
    tensors = {f"{TEXT_ENCODER_PREFIX}{k}": v.contiguous() for k, v in encoder.state_dict().items()}
    save_file(tensors, str(work / "text_encoder.safetensors"))
    save_file({"empty": empty.contiguous()}, str(work / "diffusers_empty.safetensors"))
    return {
        "text encoder": "CLIP-L sized, seeded",
        "negatives": sorted(os.listdir(work / "models" / "reneg")),
    }


def build_checkpoint(work: Path, path: Path) -> None:
    """A single-file checkpoint with SD1.5's keys and widths, random weights (seeded), saved in float16: the
    UNet and VAE in ComfyUI's own classes, the reference stage's text encoder."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel
    from safetensors.torch import load_file, save_file

    torch.manual_seed(0)
    unet = UNetModel(
        image_size=32,
        in_channels=4,
        model_channels=320,
        out_channels=4,
        num_res_blocks=[1],
        channel_mult=[1],
        transformer_depth=[1],
        transformer_depth_output=[1, 1],
        transformer_depth_middle=1,
        context_dim=768,
        num_heads=8,
        use_spatial_transformer=True,
        use_linear_in_transformer=False,
        legacy=False,
        device="cpu",
    )
    vae_config = {
        "double_z": True,
        "z_channels": 4,
        "resolution": 256,
        "in_channels": 3,
        "out_ch": 3,
        "ch": 128,
    }
    vae_config |= {"ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    vae = AutoencoderKL(ddconfig=vae_config, embed_dim=4)
    for module in (unet, vae):  # ComfyUI's layers skip their init (weights come from files): give them one
        for name, parameter in module.named_parameters():
            with torch.no_grad():
                if parameter.ndim > 1:
                    parameter.normal_(0, 0.02)
                else:
                    parameter.fill_(1.0 if "norm" in name and name.endswith("weight") else 0.0)
    tensors = {f"model.diffusion_model.{k}": v for k, v in unet.state_dict().items()}
    tensors |= {f"first_stage_model.{k}": v for k, v in vae.state_dict().items()}
    tensors |= load_file(str(work / "text_encoder.safetensors"))
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.to(torch.float16).contiguous() for k, v in tensors.items()}, str(path))


def clip_l_config():
    """CLIP ViT-L/14's text encoder, SD1.5's, with the real token ids: the values of
    `renegx.tiny.clip_l_text_config`, written again because the pack names renegx's top level only."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=49408,
        hidden_size=768,
        intermediate_size=3072,
        num_hidden_layers=12,
        num_attention_heads=12,
        max_position_embeddings=77,
        hidden_act="quick_gelu",
        bos_token_id=49406,
        eos_token_id=49407,
    )


def torchvision_stand_in(work: Path) -> Path | None:
    """A folder to put on the path when no torchvision matching the installed torch can be imported.

    ComfyUI imports torchvision at start-up for models this check never loads (Stable Cascade, Cosmos, ACE);
    the stand-in lets those imports pass and raises on any use.
    """
    probe = subprocess.run([sys.executable, "-c", "import torchvision"], capture_output=True)
    if probe.returncode == 0:
        return None
    folder = work / "stand-ins"
    body = (
        '"""Stand-in: no torchvision build matching this torch is installed; any use raises."""\n\n\n'
        "def __getattr__(name):\n"
        "    raise ImportError(f'torchvision.{name}: torchvision is not installed (stand-in)')\n"
    )
    for package in ("torchvision", "torchvision/transforms"):
        (folder / package).mkdir(parents=True, exist_ok=True)
        (folder / package / "__init__.py").write_text(body)
    return folder


# -- stage 1: ComfyUI's server -------------------------------------------------------------------------------
def api(port: int, path: str, payload: dict | None = None) -> dict:
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data)
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def workflow(name: str, **inputs: dict) -> dict:
    """An example workflow with `inputs[node_id]` merged into its nodes' inputs (CPU sizes, our files)."""
    graph = json.loads((WORKFLOWS / name).read_text())
    for node, values in inputs.items():
        graph[node]["inputs"].update(values)
    return graph


def run_workflow(port: int, graph: dict, deadline_s: float = 600) -> dict:
    """Queue `graph` and wait for its history entry: `{"status": ..., "outputs": ...}`."""
    answer = api(port, "/prompt", {"prompt": graph, "client_id": "renegx-check"})
    prompt_id = answer["prompt_id"]
    start = time.time()
    while time.time() - start < deadline_s:
        history = api(port, f"/history/{prompt_id}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(1)
    raise TimeoutError(f"prompt {prompt_id} did not finish in {deadline_s} s")


def serve_stage(comfyui: Path, work: Path, port: int) -> dict:
    command = [sys.executable, "main.py", "--listen", "127.0.0.1", "--port", str(port), "--cpu"]
    command += ["--base-directory", str(work), "--disable-auto-launch", "--disable-api-nodes"]
    log = (work / "server.log").open("w")
    server = subprocess.Popen(command, cwd=comfyui, stdout=log, stderr=subprocess.STDOUT)
    try:
        for _ in range(300):
            try:
                api(port, "/object_info/LoadReNegNegative")
                break
            except OSError:
                if server.poll() is not None:
                    raise RuntimeError(f"ComfyUI's server exited: see {work / 'server.log'}") from None
                time.sleep(1)
        listed = api(port, "/object_info/LoadReNegNegative")["LoadReNegNegative"]
        small = {"5": {"width": 64, "height": 64}}
        runs = {}
        late = {"4": {"negative": "sd15-late.safetensors", "steps": STEPS}, "6": {"steps": STEPS}}
        runs["negative (late)"] = run_workflow(port, workflow("reneg_negative_api.json", **small, **late))
        bank = {"4": {"bank": "sd15-bank.safetensors", "prompt": "a prompt the bank lacks"}}
        runs["bank (fallback)"] = run_workflow(port, workflow("reneg_bank_api.json", **small, **bank))
        wrong = {"4": {"negative": "sdxl.safetensors"}}
        runs["wrong family"] = run_workflow(port, workflow("reneg_negative_api.json", **small, **wrong))
    finally:
        server.terminate()
        server.wait(timeout=60)
    return {
        "node listed files": listed["input"]["required"]["negative"][0],
        "runs": {name: summarise_run(run) for name, run in runs.items()},
    }


def summarise_run(run: dict) -> dict:
    status = run["status"]
    errors = [m[1].get("exception_message") for m in status.get("messages", []) if m[0] == "execution_error"]
    texts, images = [], []
    for output in run.get("outputs", {}).values():
        texts += output.get("text", [])
        images += [image["filename"] for image in output.get("images", [])]
    return {"status": status.get("status_str"), "errors": errors, "info": texts, "images": images}


# -- stage 2: in-process -------------------------------------------------------------------------------------
def import_comfyui(comfyui: Path, work: Path):
    """ComfyUI's modules with its own argument parsing (`--cpu --base-directory work`) and every extra node,
    the pack among them, loaded by its own loader."""
    import asyncio

    sys.argv = [sys.argv[0], "--cpu", "--base-directory", str(work), "--disable-api-nodes"]
    sys.path.insert(0, str(comfyui))
    os.chdir(comfyui)
    import comfy.options

    comfy.options.enable_args_parsing()
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=True, init_api_nodes=False))
    return nodes


def prepare_stage(comfyui: Path, work: Path) -> dict:
    import_comfyui(comfyui, work)
    import comfy.model_detection
    import comfy.utils

    checkpoint = work / "models" / "checkpoints" / CHECKPOINT
    build_checkpoint(work, checkpoint)
    state = comfy.utils.load_torch_file(str(checkpoint))
    detected = comfy.model_detection.model_config_from_unet(state, "model.diffusion_model.")
    return {"checkpoint": str(checkpoint), "detected as": type(detected).__name__}


class CallLog:
    """A `model_function_wrapper` that records, per model call, the noise level and which of the known
    negatives the unconditional half of the batch holds."""

    def __init__(self, negatives: dict):
        self.negatives, self.calls = negatives, []

    def __call__(self, apply_model, args: dict):
        import torch

        context = args["c"]["c_crossattn"]
        chunks = context.chunk(len(args["cond_or_uncond"]))
        used = []
        for kind, chunk in zip(args["cond_or_uncond"], chunks, strict=True):
            if kind == 1:
                rows = chunk[0].float()
                names = [
                    n for n, t in self.negatives.items() if torch.allclose(rows, t, atol=1e-2, rtol=1e-2)
                ]
                used.append(names[0] if names else "unknown")
        self.calls.append((float(args["timestep"][0]), sorted(used)))
        return apply_model(args["input"], args["timestep"], **args["c"])


def sample_with(nodes, model, positive, negative, sampler, scheduler, negatives) -> tuple[list, object]:
    import comfy.sample

    log = CallLog(negatives)
    patched = model.clone()
    patched.set_model_unet_function_wrapper(log)
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]["samples"]
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(
        patched, noise, STEPS, 7.0, sampler, scheduler, positive, negative, latent, seed=0, disable_pbar=True
    )
    return log.calls, samples


def classify(calls: list, sigmas: list[float], start: int) -> dict:
    """Whether the sampler called the model once per step at the schedule's noise levels, whether each of
    those calls had the negative renegx draws at that step (the null before `start`, the learned after), and
    whether every call had the negative of the step whose noise levels (sigmas[i + 1], sigmas[i]] hold it."""
    at = [sigma for sigma, _ in calls]
    steps = len(sigmas) - 1
    one_per_step = len(at) == steps and all(
        math.isclose(a, s, rel_tol=1e-5) for a, s in zip(at, sigmas, strict=False)
    )
    expected = [["null"] if i < start else ["learned"] for i in range(steps)]
    used = [names for _, names in calls]
    first_learned = sigmas[start] * (1 + 1e-5)  # float32 noise levels
    by_step = all(names == (["null"] if sigma > first_learned else ["learned"]) for sigma, names in calls)
    return {
        "calls": len(calls),
        "one call per step at the schedule's sigmas": one_per_step,
        "each step's negative as renegx draws it": one_per_step and used == expected,
        "each call's negative that of the step it lies in": by_step,
        "calls with both negatives": sum(len(names) > 1 for names in used),
        "calls with the learned negative": sum(names == ["learned"] for names in used),
    }


def inprocess_stage(comfyui: Path, work: Path) -> dict:
    import torch

    nodes = import_comfyui(comfyui, work)
    import comfy.model_sampling
    import comfy.samplers

    import renegx

    report: dict = {"pack loaded": "LoadReNegNegative" in nodes.NODE_CLASS_MAPPINGS}
    model, clip, _vae = nodes.CheckpointLoaderSimple().load_checkpoint(CHECKPOINT)
    positive = nodes.CLIPTextEncode().encode(clip, PROMPT)[0]
    empty = nodes.CLIPTextEncode().encode(clip, "")[0]
    loader = nodes.NODE_CLASS_MAPPINGS["LoadReNegNegative"]()
    plain, info = loader.load("sd15.safetensors", 1.0)
    report["structure"] = {
        "CLIPTextEncode('')": describe(empty),
        "Load ReNeg negative": describe(plain),
        "info": info,
    }

    report["E('') ComfyUI vs diffusers, max |difference|"] = empty_difference(work, empty)
    late_file = work / "models" / "reneg" / "sd15-late.safetensors"
    late = renegx.NegativeEmbedding.load(late_file)
    pack = type(loader).__module__.rsplit(".", 1)[0]
    discrete = model.get_model_object("model_sampling")
    report["late window by noise level, SD1.5 (discrete sampling)"] = windows(pack, discrete, late)
    flow = comfy.model_sampling.ModelSamplingDiscreteFlow()
    flow.set_parameters(shift=3.0)  # SD3's
    sd3_late = renegx.NegativeEmbedding(torch.zeros(1, 333, 4096), metadata=late.metadata)
    report["late window by noise level, SD3 (flow sampling, shift 3)"] = windows(pack, flow, sd3_late)

    negatives = {"null": empty[0][0][0].float(), "learned": late.embeds[0].float()}
    runs = [(sampler, "normal") for sampler in comfy.samplers.KSampler.SAMPLERS]
    others = [scheduler for scheduler in comfy.samplers.KSampler.SCHEDULERS if scheduler != "normal"]
    runs += [(sampler, scheduler) for sampler in ("euler", "dpmpp_2m") for scheduler in others]
    table = {}
    for sampler, scheduler in runs:
        print(f"sampling with {sampler} / {scheduler}", file=sys.stderr, flush=True)
        inputs = {"model": model, "steps": STEPS, "sampler_name": sampler, "scheduler": scheduler}
        conditioning, _ = loader.load(late_file.name, 1.0, empty=empty, **inputs)
        ksampler = comfy.samplers.KSampler(model, STEPS, "cpu", sampler=sampler, scheduler=scheduler)
        sigmas = [float(s) for s in ksampler.sigmas]
        calls, samples = sample_with(nodes, model, positive, conditioning, sampler, scheduler, negatives)
        row = classify(calls, sigmas, late.start_index(len(sigmas) - 1))
        row["finite"] = bool(torch.isfinite(samples).all())
        table[f"{sampler} / {scheduler}"] = row
    report["late window in sampling, SD1.5"] = table
    return report


def empty_difference(work: Path, empty: list) -> float:
    """Max |difference| between ComfyUI's SD1.5 encoding of "" and the reference stage's diffusers-style one
    of the same (float16-rounded) weights."""
    from safetensors.torch import load_file

    reference = load_file(str(work / "diffusers_empty.safetensors"))["empty"]
    return (empty[0][0].float() - reference).abs().max().item()


def windows(pack: str, sampling, late) -> dict:
    """For every scheduler and 10, 20, 30 steps: the pack's window on ComfyUI's own schedule, then ComfyUI's
    own percent → noise level conversion and per-call test at each step's noise level. True where each step
    takes exactly the negative renegx draws at that step (`pack`: the pack's module name)."""
    import comfy.samplers
    import torch

    class Model:  # what ComfyUI's KSampler and its conditioning read of a model
        model_sampling = sampling

        def get_model_object(self, name):
            return sampling

    ksampler_schedule = sys.modules[f"{pack}.nodes"].ksampler_schedule
    start_percent = sys.modules[f"{pack}.window"].start_percent
    out = {}
    for scheduler in comfy.samplers.KSampler.SCHEDULERS:
        for steps in (10, 20, 30):
            schedule = ksampler_schedule(Model(), steps, "euler", scheduler)
            start = late.start_index(schedule.num_steps)
            percent = start_percent(schedule, start)
            conds = [
                {"start_percent": 0.0, "end_percent": percent, "name": "null", "model_conds": {}, "uuid": 0},
                {
                    "start_percent": percent,
                    "end_percent": 1.0,
                    "name": "learned",
                    "model_conds": {},
                    "uuid": 1,
                },
            ]
            comfy.samplers.calculate_start_end_timesteps(Model(), conds)
            latent = torch.zeros(1, 4, 8, 8)
            used = [
                [
                    c["name"]
                    for c in conds
                    if comfy.samplers.get_area_and_mult(c, latent, torch.tensor([sigma]))
                ]
                for sigma in schedule.sigmas[:-1]
            ]
            expected = [["null"] if i < start else ["learned"] for i in range(schedule.num_steps)]
            out[f"{scheduler}, {steps} steps"] = used == expected
    return out


def describe(conditioning: list) -> list:
    return [
        [tuple(cond.shape), {k: tuple(v.shape) if hasattr(v, "shape") else v for k, v in options.items()}]
        for cond, options in conditioning
    ]


STAGES = ("reference", "prepare", "serve", "inprocess")  # each in a process of its own


def run_stage(stage: str, comfyui: Path, work: Path, port: int) -> dict:
    if stage == "reference":
        return reference_stage(work)
    if stage == "serve":
        return serve_stage(comfyui, work, port)
    return {"prepare": prepare_stage, "inprocess": inprocess_stage}[stage](comfyui, work)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--comfyui", type=Path, required=True, help="a ComfyUI checkout")
    parser.add_argument("--work", type=Path, required=True, help="ComfyUI's --base-directory for this check")
    parser.add_argument("--port", type=int, default=8199, help="the server's port on 127.0.0.1")
    parser.add_argument("--stage", choices=STAGES, help="run one stage in this process (the check runs each)")
    args = parser.parse_args()
    comfyui, work = args.comfyui.resolve(), args.work.resolve()
    if args.stage:
        print(json.dumps(run_stage(args.stage, comfyui, work, args.port), default=str))
        return 0
    link = work / "custom_nodes" / "renegx"
    link.parent.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(PACK, target_is_directory=True)
    stand_in = torchvision_stand_in(work)
    with_comfyui = dict(os.environ)
    if stand_in is not None:
        with_comfyui["PYTHONPATH"] = os.pathsep.join(
            filter(None, [str(stand_in), os.environ.get("PYTHONPATH")])
        )
    report = {"torchvision": "stand-in" if stand_in else "installed"}
    for stage in STAGES:
        command = [sys.executable, __file__, "--comfyui", str(comfyui), "--work", str(work), "--stage", stage]
        env = os.environ if stage == "reference" else with_comfyui
        done = subprocess.run([*command, "--port", str(args.port)], env=env, capture_output=True, text=True)
        if done.returncode != 0:
            print(done.stdout[-4000:], done.stderr[-8000:], sep="\n")
            return done.returncode
        report[stage] = json.loads(done.stdout.strip().splitlines()[-1])
    (work / "report.json").write_text(json.dumps(report, indent=2, default=str))
    print(json.dumps(report, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
