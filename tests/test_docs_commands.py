"""Every command in README.md and docs/*.md runs: an example that stops working fails here, named.

The fenced bash and python blocks are read from the documents; each command must have an entry in
`SUBSTITUTIONS`: the command as run here and why it differs from the document, if it does. Commands that need
a real downloaded model, a GPU or the network run with the tiny or toy model, small sizes and local stand-ins
for the downloads; launchers for several machines run the training command they launch with `--print_config`
(it parses and type-checks every flag and the whole config); long measurements whose results the docs quote
have their documented arguments parsed by their own parser, not run; answered experiments (`python -m
experiments.X`, experiments/README.md) are not run at all. Each command is its own test, run in this
interpreter where it is `renegx ...` or `python -m bench.X ...` (no second start-up of torch), else in a
shell. All share one working folder that holds the stand-ins and a small default run, so the README's
`runs/default/version_0/negative.safetensors` exists whichever command runs first, or alone (`-k`).
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)
# An answered experiment's command: its results are quoted in the docs with the commit that produced them, and
# the script is not maintained, so it is not run here (environment assignments may come first).
EXPERIMENT = re.compile(
    r"^(?:[A-Z_]+=\S*\s+)*"  # environment assignments
    r"(?:python3?\s+-m\s+experiments\."  # python -m experiments.X
    r"|python3?\s+(?:\./)?experiments/"  # python experiments/X.py
    r"|cd\s+(?:\./)?experiments(?:/|\s|$))"  # cd experiments && ...
)

# The default training, small: 2 steps of 4 DDIM steps, the held-out table on 2 prompts × 1 seed.
SMALL_TOY = (
    "--trainer.max_steps 2 --model.num_inference_steps 4 "
    "--model.stop_steps 1 --trainer.callbacks.init_args.prompts '[a red circle, a blue square]' "
    "--trainer.callbacks.init_args.seeds '[0]'"
)
TINY_EVAL = "--judge-opt model=tiny --steps 2 --limit 1"
SMALL_BENCH = "--batch-size 1 --num-inference-steps 4 --stop-steps 2 --steps 1 --warmup 0"
NO_COMPILE = "cache,positive_no_grad,bf16,sdpa,channels_last,checkpointing,decode_at_reward_size,multi_stop"
GPU_BENCH_WHY = (
    "no GPU in CI: the tiny model on the CPU, ablating the two switches the command sets; tiny sizes"
)
COMPILE_WHY = (
    "every optimisation but compile (its first compile takes minutes on a CPU); tiny sizes, one round"
)
AS_WRITTEN = "as written"
ANSWERED = "an answered experiment, its results in the docs: the arguments are parsed as written"
PARSE = "(parsed)"  # an answered experiment: its documented arguments are parsed, not run
MORE = "+ "  # a command that starts so is the documented one with these flags added
NO_WEIGHTS = "real weights are not in CI: the tiny model stands in"
COMFYUI_WHY = "the real-ComfyUI check needs the network and ComfyUI's source: not run in CI"
MULTI_GPU = "several GPUs or machines: the launched training command is parsed and checked (--print_config)"
SINGLE_FILE = (
    "no fine-tune offline: the toy model written as a single file in the original SD1.x layout stands in, "
    "its diffusers folder as the config"
)

# The README's use of an exported file, on the toy world's own diffusers folder and the default run's file.
README_DIFFUSERS = """
from diffusers import DDIMScheduler, StableDiffusionPipeline
from renegx.negatives.embedding import NegativeEmbedding
from renegx.toyworld import generator_folder

pipe = StableDiffusionPipeline.from_pretrained(generator_folder())
pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
negative = NegativeEmbedding.load("runs/default/version_0/negative.safetensors")
prompts = ["a photo of a cat", "a castle at dusk"]
images = pipe(
    prompts, guidance_scale=7.5, num_inference_steps=2, **negative.for_pipeline(pipe, len(prompts))
).images
assert len(images) == 2
"""

SUBSTITUTIONS: dict[str, tuple[str, str]] = {
    # README.md
    "make train": (
        f"renegx fit --config train/default {SMALL_TOY}",
        "make train = install, then `renegx fit` (train/default); small sizes",
    ),
    "make test": ("make -n test", "the suite itself runs this test: a dry run checks the target"),
    "make test-all": ("make -n test-all", "the suite itself runs this test: a dry run checks the target"),
    "renegx infer --model toy --negative runs/default/version_0/negative.safetensors "
    '--prompt "a red circle" --seeds 0,1 --out outputs/': (
        "renegx infer --model toy --negative runs/default/version_0/negative.safetensors "
        '--prompt "a red circle" --seeds 0,1 --out outputs/ --steps 2',
        "2 DDIM steps",
    ),
    "HF_HUB_OFFLINE=1 renegx fit --config train/sd15_clip "
    "--model.model /models/sd15 --model.reward.init_args.model /models/clip-l": (
        "HF_HUB_OFFLINE=1 renegx fit --config train/sd15_clip "
        "--model.model tiny "
        "--model.reward.init_args.model tiny --trainer.max_steps 1 --trainer.accumulate_grad_batches 1 "
        "--model.num_inference_steps 2 --model.stop_steps 1 --data.val_size 1 --trainer.val_check_interval 1",
        NO_WEIGHTS + "; one step of 2 DDIM steps",
    ),
    "HF_HUB_OFFLINE=1 renegx fit --config train/sd15_clip "
    "--model.model /models/finetune.safetensors --model.model_config /models/sd15 "
    "--model.reward.init_args.model /models/clip-l": (
        "HF_HUB_OFFLINE=1 renegx fit --config train/sd15_clip "
        "--model.model models/finetune.safetensors --model.model_config models/sd15 "
        "--model.reward.init_args.model tiny --trainer.max_steps 1 --trainer.accumulate_grad_batches 1 "
        "--model.num_inference_steps 2 --model.stop_steps 1 --data.val_size 1 --trainer.val_check_interval 1",
        SINGLE_FILE + "; one step of 2 DDIM steps",
    ),
    "renegx infer --model /models/finetune.safetensors --model-config /models/sd15 "
    '--negative negative.safetensors --prompt "a castle at dusk" --out outputs/castle/': (
        "renegx infer --model models/finetune.safetensors --model-config models/sd15 "
        '--negative runs/default/version_0/negative.safetensors --prompt "a castle at dusk" '
        "--out outputs/castle/ --steps 2",
        SINGLE_FILE + "; the default run's negative (the toy's); 2 DDIM steps",
    ),
    "renegx fit --config train/default --model.space tokens --model.num_tokens 8 --model.lr 0.005 "
    "--trainer.logger.init_args.name tokens": (MORE + SMALL_TOY, "the default training, small"),
    "renegx invert runs/default/version_0/negative.safetensors --tokens 8 --out inverted.safetensors": (
        MORE + "--steps 3",
        "3 Adam steps",
    ),
    "renegx weights --config train/sd15_hpsv2": (
        "renegx weights --help",
        "downloads from the hub: CI is offline, the command's flags are checked",
    ),
    "renegx convert-reward HPS_v2.1_compressed.pt hps_v2.1.safetensors": (
        "renegx convert-reward HPS_v2.1_compressed.pt hps_v2.1.safetensors",
        "a small pickled checkpoint stands in for HPS_v2.1_compressed.pt",
    ),
    "renegx per-prompt --config train/default --embedding "
    "runs/default/version_0/negative.safetensors --prompts prompts.txt --out outputs/bank.safetensors "
    "--max-steps 10 --patience 3 --eval-seeds 0,1": (
        "renegx per-prompt --config train/default --embedding "
        "runs/default/version_0/negative.safetensors --prompts prompts.txt --out outputs/bank.safetensors "
        "--max-steps 1 --patience 1 --eval-seeds 0",
        "prompts.txt holds 2 prompts; 1 step, 1 evaluation seed",
    ),
    "renegx infer --negative outputs/bank.safetensors --prompts prompts.txt --bank-fallback global "
    "--out outputs/bank/": (
        "renegx infer --negative outputs/bank.safetensors --prompts prompts.txt --bank-fallback global "
        "--out outputs/bank/ "
        "--steps 2",
        "2 DDIM steps",
    ),
    "renegx convert sd2.1_reneg_emb.bin sd21.safetensors --base-model sd2.1": (
        "renegx convert sd2.1_reneg_emb.bin sd21.safetensors --base-model sd2.1",
        "a zero tensor of the official shape (1, 77, 1024) stands in for the official file",
    ),
    "frames = pipe(prompt, num_frames=16, **negative.for_pipeline(pipe, 1)).frames": (
        "from renegx.models import load_backbone\n"
        "from renegx.negatives.embedding import NegativeEmbedding\n"
        "pipe = load_backbone('tiny').pipeline()\n"
        "negative = NegativeEmbedding.load('tiny.safetensors')\n"
        "prompt = 'a cat'\n"
        "frames = pipe(prompt, num_inference_steps=2, **negative.for_pipeline(pipe, 1)).images",
        "no video model offline: the same call on the tiny image pipeline (no num_frames; .images)",
    ),
    "renegx evaluate --model /models/sd15 --benchmark hpsv2 --hpsv2-prompts /data/hpsv2/benchmark "
    '--negatives null,"text:blurry, ugly",runs/sd15_hpsv2/version_0/negative.safetensors '
    "--judges hpsv2.1,pickscore,imagereward --seeds 0 --out eval/sd15_hpsv2": (
        "renegx evaluate --model tiny --benchmark hpsv2 --hpsv2-prompts hpsv2/benchmark "
        '--negatives null,"text:blurry, ugly",runs/sd15_hpsv2/version_0/negative.safetensors '
        f"--judges hpsv2.1,pickscore,imagereward --seeds 0 --out eval/sd15_hpsv2 {TINY_EVAL}",
        NO_WEIGHTS + " (model and judges); 2 prompts per style in a local benchmark folder; "
        "a tiny-model file stands in for the SD1.5 run's",
    ),
    "renegx evaluate --config evaluate/tiny": (
        "renegx evaluate --config evaluate/tiny",
        AS_WRITTEN,
    ),
    "python -c 'README: use an exported file in diffusers'": (
        README_DIFFUSERS,
        NO_WEIGHTS.replace("tiny", "toy"),
    ),
    "renegx fit --config train/sd15_clip --trainer.accelerator gpu --trainer.devices 4 "
    "--trainer.accumulate_grad_batches 4": (
        "renegx fit --config train/sd15_clip "
        "--trainer.accelerator gpu --trainer.devices 4 "
        "--trainer.accumulate_grad_batches 4 --print_config",
        MULTI_GPU,
    ),
    'torchrun --nnodes 2 --nproc-per-node 4 --node-rank "$NODE_RANK" --master-addr "$MASTER_ADDR" '
    "--master-port 29500 -m renegx.cli fit --config train/sd15_clip --trainer.accelerator gpu "
    "--trainer.devices 4 --trainer.num_nodes 2 --trainer.accumulate_grad_batches 2": (
        "renegx fit --config train/sd15_clip "
        "--trainer.accelerator gpu --trainer.devices 4 "
        "--trainer.num_nodes 2 --trainer.accumulate_grad_batches 2 --print_config",
        MULTI_GPU,
    ),
    "srun renegx fit --config train/sd15_clip "
    "--trainer.accelerator gpu --trainer.devices 4 "
    "--trainer.num_nodes 2 --trainer.accumulate_grad_batches 2 --ckpt_path last": (
        "renegx fit --config train/sd15_clip "
        "--trainer.accelerator gpu --trainer.devices 4 "
        "--trainer.num_nodes 2 --trainer.accumulate_grad_batches 2 --ckpt_path last --print_config",
        MULTI_GPU + " (SLURM's srun dropped)",
    ),
    "renegx fit --config train/sd15_clip "
    "--trainer.logger lightning.pytorch.loggers.WandbLogger "
    "--trainer.logger.init_args.project renegx --trainer.logger.init_args.offline true": (
        MORE + "--print_config",
        "SD1.5 weights are not in CI: the config and logger flags are parsed and checked (--print_config)",
    ),
    # docs/benchmarks.md
    "python -m bench.threads --repeats 5": (
        "python -m bench.threads --repeats 1 --steps 1",
        "one repeat of one step: the script runs, the figure is not asserted",
    ),
    "python -m bench.train_step --threads 1": (MORE + SMALL_BENCH, "tiny sizes, one timed round"),
    "python -m bench.train_step --threads 1 --ablate all": (
        f"python -m bench.train_step --threads 1 --ablate {NO_COMPILE} {SMALL_BENCH}",
        COMPILE_WHY,
    ),
    "python -m bench.train_step --threads 1 --clock cpu ...": (
        f"python -m bench.train_step --threads 1 --clock cpu {SMALL_BENCH}",
        "'...' stands for the other flags; tiny sizes, one timed round",
    ),
    "python -m bench.train_step --model sd15 --device cuda --batch-size 4 --frozen-dtype bfloat16 "
    "--gradient-checkpointing --ablate all": (
        "python -m bench.train_step --model tiny --device cpu --frozen-dtype bfloat16 "
        f"--gradient-checkpointing --ablate bf16,checkpointing {SMALL_BENCH}",
        GPU_BENCH_WHY,
    ),
    "python -m bench.train_step --model sd15 --device cuda --batch-size 4 --steps 6 --frozen-dtype bfloat16 "
    "--gradient-checkpointing --ablate all": (
        "python -m bench.train_step --model tiny --device cpu --frozen-dtype bfloat16 "
        f"--gradient-checkpointing --ablate bf16,checkpointing {SMALL_BENCH}",
        GPU_BENCH_WHY,
    ),
    # docs/evaluation.md
    "renegx evaluate --model <hub id | folder | tiny | toy> "
    '--negatives null,"text:blurry, ugly",a.safetensors,bank.safetensors '
    "--benchmark hpsv2|parti|imagereward|toyworld|<prompt file> "
    "--judges hpsv2.1,pickscore,imagereward,aesthetic,clip --seeds 0,1 --out eval/": (
        "renegx evaluate --model toy "
        '--negatives null,"text:blurry, ugly",a.safetensors,outputs/bank.safetensors '
        "--benchmark prompts.txt --judges hpsv2.1,pickscore,imagereward,aesthetic,clip --seeds 0,1 "
        f"--out eval/ {TINY_EVAL}",
        "a template: one choice each (toy, a prompt file); tiny judges; a.safetensors: the default run's; "
        "the bank: the README's",
    ),
    "renegx evaluate --config evaluate/sd15_hpsv2 --model /models/sd15": (
        "renegx evaluate --config evaluate/sd15_hpsv2 --model tiny "
        f"--hpsv2-prompts hpsv2/benchmark --out eval/config {TINY_EVAL}",
        NO_WEIGHTS + " (model and judges); the local benchmark folder; the tiny-model file as learned",
    ),
    "renegx evaluate --model /models/sd15 --benchmark hpsv2 --hpsv2-prompts /data/hpsv2/benchmark "
    "--negatives null,ti:easynegative.safetensors,runs/sd15_hpsv2/version_0/negative.safetensors "
    "--out eval/": (
        "renegx evaluate --model tiny --benchmark hpsv2 --hpsv2-prompts hpsv2/benchmark "
        "--negatives null,ti:easynegative.safetensors,runs/sd15_hpsv2/version_0/negative.safetensors "
        f"--out eval/ti --judges hpsv2.1 {TINY_EVAL}",
        NO_WEIGHTS + "; an A1111-layout textual inversion for the tiny encoder stands in for EasyNegative",
    ),
    "python -c 'docs/evaluation.md: statistics'": (
        "import random\n"
        "random.seed(0)\n"
        "cosines_in_prompt_order = [random.random() / 3 for _ in range(160)]\n"
        "scores_a = [random.random() for _ in range(40)]\n"
        "scores_b = [random.random() for _ in range(40)]\n"
        "prompt_ids = [i // 2 for i in range(40)]\n"
        "{block}",
        "the scores it names, made up",
    ),
    # docs/samplers.md
    "renegx infer --model toy --sampler vlm --sampler-config samplers/vlm --negative "
    'runs/default/version_0/negative.safetensors --prompt "a red circle" --out outputs/': (
        "renegx infer --model toy --sampler vlm --sampler-config samplers/vlm --negative "
        'runs/default/version_0/negative.safetensors --prompt "a red circle" --out outputs/ --steps 2',
        "2 DDIM steps",
    ),
    "python -m bench.samplers --embedding runs/default/version_0/negative.safetensors "
    "--prompts 64 --seeds 0,1": (
        "python -m bench.samplers --embedding runs/default/version_0/negative.safetensors "
        "--prompts 1 --seeds 0 --novelty-seeds 0 --steps 2",
        "1 prompt, 1 seed, 2 steps",
    ),
    # docs/toyworld.md
    "renegx fit": (
        f"renegx fit --config train/default {SMALL_TOY}",
        "the same, small",
    ),
    "renegx infer --model toy --negative runs/default/version_0/negative.safetensors "
    '--prompt "a red circle" --out outputs/': (
        MORE + "--steps 2",
        "2 DDIM steps",
    ),
    "renegx evaluate --config evaluate/toyworld": (
        "renegx evaluate --config evaluate/toyworld --steps 2 --limit 1 --seeds 0",
        "1 prompt, 1 seed, 2 steps",
    ),
    "python -m bench.monitor_agreement": (
        "python -m bench.monitor_agreement --runs 0:0.04 --steps 2 --fit-args "
        '"--model.num_inference_steps 4 --model.stop_steps 1 --trainer.callbacks.init_args.prompts '
        "'[a red circle]' --trainer.callbacks.init_args.seeds '[0]'\"",
        "one run of 2 steps at DDIM 4, the held-out table on 1 prompt × 1 noise",
    ),
    # docs/benchmarks.md
    "python -m bench.time_to_quality": (PARSE, ANSWERED),
    "python -m bench.time_to_quality --estimators paper,reuse-4": (PARSE, ANSWERED),
    "python -m bench.time_to_quality --estimators paper,batch-8 --seeds 0,1,2 --eval-prompts 64 "
    "--eval-seeds 6000,6001": (PARSE, ANSWERED),
    "python -m bench.time_to_quality --split train --seeds 0": (PARSE, ANSWERED),
    # docs/comfyui.md
    "pip install -e /path/to/renegx": (
        "python -c 'import renegx'",
        "installing needs the network: renegx imports",
    ),
    "ln -s /path/to/renegx/integrations/comfyui /path/to/ComfyUI/custom_nodes/renegx": (
        'mkdir -p ComfyUI/custom_nodes && ln -sfn "$PWD/integrations/comfyui" ComfyUI/custom_nodes/renegx',
        "a local ComfyUI/ folder stands in for the user's",
    ),
    "mkdir -p /path/to/ComfyUI/models/reneg && cp negative.safetensors /path/to/ComfyUI/models/reneg/": (
        "mkdir -p ComfyUI/models/reneg && "
        "cp runs/default/version_0/negative.safetensors ComfyUI/models/reneg/",
        "a local ComfyUI/ folder; the default run's export",
    ),
    "git clone https://github.com/Comfy-Org/ComfyUI /tmp/comfyui && "
    "git -C /tmp/comfyui checkout a125cd84b054": (
        "true",
        COMFYUI_WHY,
    ),
    "python -m venv .venv-comfy": ("true", COMFYUI_WHY),
    ".venv-comfy/bin/pip install torch==2.13.0": ("true", COMFYUI_WHY),
    ".venv-comfy/bin/pip install -r /tmp/comfyui/requirements.txt requests torch==2.13.0": (
        "true",
        COMFYUI_WHY,
    ),
    ".venv-comfy/bin/pip uninstall -y torchvision": ("true", COMFYUI_WHY),
    ".venv-comfy/bin/pip install --no-deps -e .": ("true", COMFYUI_WHY),
    ".venv-comfy/bin/python integrations/comfyui/check_in_comfyui.py --comfyui /tmp/comfyui "
    "--work /tmp/comfy-check": (
        "python integrations/comfyui/check_in_comfyui.py --help",
        "needs ComfyUI's source and its requirements (not in CI): the script's options are checked",
    ),
    "renegx fit --config train/toy_flow": (
        f"renegx fit --config train/toy_flow {SMALL_TOY}",
        "the flow-matching toy generator's training, small sizes",
    ),
    "renegx evaluate --model toy-flow --negatives null,runs/toy_flow/version_0/negative.safetensors "
    "--benchmark toyworld --seeds 300000,300001,300002,300003 --noise per-prompt "
    "--out outputs/toy_flow_heldout": (
        "renegx evaluate --model toy-flow --negatives null,text:blurry --benchmark toyworld --limit 2 "
        "--steps 2 --seeds 300000 --noise per-prompt --out outputs/toy_flow_heldout",
        "the toy_flow run's export is not made here: a text negative stands in, small sizes",
    ),
    "python -m renegx.toyworld.build": (
        "python -m renegx.toyworld.build --out toyworld-weights --stages prompts",
        "the whole build takes hours: its first stage, into a scratch folder (not the package's weights)",
    ),
}


def _python_key(document: Path, code: str) -> str:
    """Python blocks are named by where they are (their text is long)."""
    if "StableDiffusionPipeline.from_pretrained" in code:
        return "python -c 'README: use an exported file in diffusers'"
    if "hps_style_score" in code:
        return "python -c 'docs/evaluation.md: statistics'"
    return code.strip()


def shown_commands() -> list[tuple[str, str, str]]:
    """(document, language, command) for every command of every fenced bash or python block, in order."""
    commands = []
    for document in DOCUMENTS:
        for language, code in BLOCK.findall(document.read_text()):
            if language == "python":
                commands.append((document.name, language, code))
                continue
            for line in code.replace("\\\n", " ").splitlines():
                line = re.sub(r"(^|\s)#.*$", "", line).strip()  # comments, #SBATCH lines included
                if line:
                    commands.append((document.name, language, " ".join(line.split())))
    return commands


def is_experiment(command: str) -> bool:
    """An answered experiment's command: `python -m experiments.X ...`, a script under experiments/, or a
    command run from that folder."""
    return EXPERIMENT.match(command) is not None


def documented_commands() -> list[tuple[str, str, str]]:
    """The shown commands this test runs: all but the answered experiments' (experiments/README.md)."""
    return [entry for entry in shown_commands() if not is_experiment(entry[2])]


def _key(document: str, language: str, command: str) -> str:
    return _python_key(Path(document), command) if language == "python" else command


def test_answered_experiments_are_shown_in_the_docs_and_not_run():
    assert is_experiment("python -m experiments.toy_diagnosis curves --steps 250 --every 125")
    assert is_experiment("OMP_NUM_THREADS=1 python -m experiments.multi_stop --seeds 0")
    assert is_experiment("python experiments/multi_stop.py --seeds 0")
    assert is_experiment("cd experiments && python -m toy_diagnosis sensitivity")
    assert not is_experiment("python -m bench.train_step --threads 1")
    assert not is_experiment("python -m bench.experiments --help")
    assert not is_experiment("renegx fit --config train/default --trainer.default_root_dir experiments")
    shown = [command for _, _, command in shown_commands() if is_experiment(command)]
    assert shown, "the docs quote answered experiments with their commands"
    assert not [command for _, _, command in documented_commands() if is_experiment(command)]


def test_every_documented_command_has_a_substitution_entry():
    keys = [_key(*entry) for entry in documented_commands()]
    missing = [key for key in keys if key not in SUBSTITUTIONS]
    assert not missing, f"documented commands without an entry in SUBSTITUTIONS: {missing}"
    unused = set(SUBSTITUTIONS) - set(keys)
    assert not unused, f"SUBSTITUTIONS entries no document shows: {sorted(unused)}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A scratch folder laid out like the repository for the commands, with the stand-ins they read, and the
    default run (small) that the README's later commands use, so that any one command runs alone (`-k`)."""
    from safetensors.torch import save_file
    from single_file_layout import sd_single_file, write_single_file

    from renegx.evaluate.benchmarks import HPS_STYLES
    from renegx.models.sd import load_components
    from renegx.negatives.embedding import NegativeEmbedding
    from renegx.toyworld import generator_folder

    work = tmp_path_factory.mktemp("docs")
    for name in ("bench", "integrations", "train.py", "infer.py", "Makefile", "pyproject.toml"):
        (work / name).symlink_to(ROOT / name)
    python = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n'
    for folder in (work / "bin", work / ".venv" / "bin"):
        folder.mkdir(parents=True)
        (folder / "python").write_text(python)
        (folder / "python").chmod(0o755)
    (work / "prompts.txt").write_text("a red circle\na blue square\n")
    torch.save({"weight": torch.zeros(2, 2)}, work / "HPS_v2.1_compressed.pt")
    torch.save(torch.zeros(1, 77, 1024), work / "sd2.1_reneg_emb.bin")
    tiny = NegativeEmbedding(torch.randn(1, 77, 32), metadata={"base_model": "tiny"})
    tiny.save(work / "tiny.safetensors")
    (work / "runs" / "sd15_hpsv2" / "version_0").mkdir(parents=True)
    tiny.save(work / "runs" / "sd15_hpsv2" / "version_0" / "negative.safetensors")
    benchmark = work / "hpsv2" / "benchmark"
    benchmark.mkdir(parents=True)
    for style in HPS_STYLES:
        (benchmark / f"{style}.json").write_text(json.dumps([f"{style} of a cat", f"{style} of a dog"]))
    save_file({"emb_params": torch.randn(2, 32)}, str(work / "easynegative.safetensors"))
    (work / "models").mkdir()
    (work / "models" / "sd15").symlink_to(generator_folder())
    toy = load_components(str(generator_folder()))
    write_single_file(sd_single_file(toy), work / "models" / "finetune.safetensors")
    here = Path.cwd()
    os.chdir(work)
    try:
        from renegx.cli import main

        assert main(["fit", "--config", "train/default", *shlex.split(SMALL_TOY)]) in (0, None)
    finally:
        os.chdir(here)
    # The evaluation template names the default run's embedding a.safetensors.
    (work / "a.safetensors").symlink_to(work / "runs/default/version_0/negative.safetensors")
    return work


def _in_process(argv: list[str]) -> int | None:
    """Run `renegx ...` or `python -m bench.X|renegx.X ...` in this interpreter (no second import of torch);
    None where the command needs a shell."""
    if argv[0] == "renegx":
        from renegx.cli import main

        return main(argv[1:])
    if (
        argv[:2] == ["python", "-m"]
        and argv[2].split(".")[0] in ("bench", "renegx")
        and argv[2] != "renegx.cli"
    ):
        module = importlib.import_module(argv[2])
        if hasattr(module, "main"):
            returned = module.main(argv[3:])  # benches return their measurement
            return returned if isinstance(returned, int) else 0
    return None


def _parse(argv: list[str]) -> None:
    """An answered experiment's documented arguments, parsed by its own parser and not run."""
    assert argv[:2] == ["python", "-m"], f"only `python -m MODULE ...` commands are parsed, not {argv[:2]}"
    importlib.import_module(argv[2]).parse_args(argv[3:])


def _shell(command: str, language: str, original: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        # `renegx` is the console script beside this interpreter; it imports this checkout's package.
        "PATH": f"{cwd / 'bin'}:{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PYTHONPATH": str(ROOT),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "offline",
        "OMP_NUM_THREADS": "1",
    }
    if language == "python":
        script = cwd / "snippet.py"
        script.write_text(textwrap.dedent(command.replace("{block}", original)))
        argv = [sys.executable, str(script)]
    else:
        argv = ["bash", "-c", command]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def _argv(command: str) -> list[str] | None:
    """The words of a plain command (environment assignments dropped); None for anything a shell must read."""
    if any(mark in command for mark in ("&&", "|", ";", "$", ">", "<", "`")):
        return None
    words = shlex.split(command)
    while words and re.fullmatch(r"[A-Z_]+=\S*", words[0]):
        words.pop(0)
    return words or None


def run_documented(document: str, language: str, original: str, cwd: Path, capfd) -> None:
    """Run one documented command as its SUBSTITUTIONS entry says; fail naming it and its last lines."""
    command, _why = SUBSTITUTIONS[_key(document, language, original)]
    if command == PARSE:
        _parse(shlex.split(original))
        return
    if command.startswith(MORE):
        command = f"{original} {command[len(MORE) :]}"
    argv = _argv(command) if language == "bash" else None
    threads = torch.get_num_threads()
    try:
        code = _in_process(argv) if argv else None
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        torch.set_num_threads(threads)
    if code is None:
        result = _shell(command, language, original, cwd)
        code, output = result.returncode, (result.stderr or result.stdout)
    else:
        captured = capfd.readouterr()
        output = captured.err or captured.out
    tail = " | ".join(output.strip().splitlines()[-3:])
    assert code in (0, None), f"{document}: {command[:160]} -> exit {code}: {tail}"


def _id(entry: tuple[str, str, str]) -> str:
    document, language, command = entry
    return f"{document}:{_key(document, language, command)[:70]}"


@pytest.mark.slow
@pytest.mark.parametrize("entry", documented_commands(), ids=_id)
def test_documented_command_runs(entry, workdir, monkeypatch, capfd):
    document, language, original = entry
    monkeypatch.chdir(workdir)
    run_documented(document, language, original, workdir, capfd)
