"""`infer.py --sampler ...` on the tiny model: images, sidecars with NFE and per-step negatives, errors."""

import json

import pytest
import torch

from renegx.cli import infer_main
from renegx.negatives.embedding import NegativeEmbedding


def _infer(tmp_path, name, *args):
    out = tmp_path / name
    code = infer_main(["--prompt", "a cat", "--steps", "2", "--out", str(out), *args])
    return code, out


def _sidecar(out, seed=0):
    return json.loads((out / f"0000_seed{seed}.json").read_text())


def test_cfg_sampler_draws_the_pipeline_image(tmp_path):
    """The composer path and the diffusers pipeline path write the same pixels for the same seed."""
    code, pipeline = _infer(tmp_path, "pipeline", "--negative", "text:blurry")
    assert code == 0
    code, composer = _infer(tmp_path, "composer", "--negative", "text:blurry", "--sampler", "cfg")
    assert code == 0
    assert (pipeline / "0000_seed0.png").read_bytes() == (composer / "0000_seed0.png").read_bytes()
    sidecar = _sidecar(composer)
    assert sidecar["sampler"] == "cfg" and sidecar["nfe"] == 4 and isinstance(sidecar["nfe"], int)
    assert [s["base"] for s in sidecar["negatives_per_step"]] == ["text:blurry"] * 2
    assert sidecar["external_calls"] == {"vae_decode": 1} and sidecar["seconds"] > 0
    assert sidecar["negative"]["kind"] == "text" and sidecar["num_inference_steps"] == 2


def test_adaptive_samplers_run_from_the_command_line_with_a_learned_embedding(tmp_path):
    path = tmp_path / "negative.safetensors"
    NegativeEmbedding(torch.randn(1, 77, 32, generator=torch.Generator().manual_seed(0))).save(path)
    runs = {
        "dnp": ["--sampler-opt", "captioner=fixed:a blurry photo"],
        "answer": ["--sampler-opt", "lookahead=2"],
        "vlm": [],  # "auto": the tiny random ViLT for --model tiny
        "npc": ["--sampler-opt", "verifier=scripted:0,1", "--sampler-opt", "captioner=fixed:two dogs"],
    }
    for name, options in runs.items():
        code, out = _infer(tmp_path, name, "--negative", str(path), "--sampler", name, *options)
        assert code == 0, name
        sidecar = _sidecar(out)
        assert sidecar["sampler"] == name and isinstance(sidecar["nfe"], int) and sidecar["nfe"] >= 4, name
        assert len(sidecar["negatives_per_step"]) == 2 and sidecar["negatives_per_step"][0]["base"], name
        assert sidecar["negative"]["kind"] == "embedding" and (out / "0000_seed0.png").stat().st_size > 0
    assert _sidecar(tmp_path / "answer")["nfe"] == 4 + (2 + 1) + (
        0 + 1
    )  # a learned base is not the null anchor
    assert _sidecar(tmp_path / "vlm")["external_calls"]["vqa"] == 2
    assert _sidecar(tmp_path / "npc")["details"]["npc"]["stopped"] == "verified"


def test_sampler_config_file_and_overrides(tmp_path):
    config = tmp_path / "vlm.yaml"
    config.write_text(
        # keep_prompt_words: the scripted answers name the prompt's own subject ("a cat")
        "sampler: vlm\noracle: scripted:cat,dog\nquery_window: '0:1 steps'\nsteps: 3\n"
        "keep_prompt_words: true\nnegatives:\n"
        "  - {text: watermark, window: '0.5:1', form: concat}\n"
    )
    code, out = _infer(tmp_path, "vlm", "--sampler-config", str(config), "--seeds", "0,1")
    assert code == 0
    sidecar = _sidecar(out, 0)
    assert _sidecar(out, 1)["seed"] == 1 and sidecar["num_inference_steps"] == 3  # the file wins over --steps
    assert [s["base"] for s in sidecar["negatives_per_step"]] == [
        "null",
        "set:cat",
        "set:cat + text:watermark",
    ]
    assert sidecar["sampler_options"]["query_window"] == "[0, 1) steps"
    assert _sidecar(out, 1)["details"]["vlm"]["negative_set"] == ["dog"]  # a script runs on across images
    code, out = _infer(tmp_path, "over", "--sampler-config", str(config), "--sampler-opt", "steps=2")
    assert code == 0 and _sidecar(out)["num_inference_steps"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--sampler", "cfg", "--sampler-opt", "stepz=3"], "unknown option(s) stepz"),
        (["--sampler", "answer", "--sampler-opt", "neg_form=both"], "neg_form must be one of"),
        (["--sampler", "vlm", "--sampler-opt", "oracle=vilt:/nonexistent/vilt"], "model folder not found"),
        (["--sampler-config", "/nonexistent/s.yaml"], "sampler config not found"),
    ],
)
def test_sampler_errors_are_one_line(tmp_path, capsys, args, message):
    code, _ = _infer(tmp_path, "err", *args)
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("renegx: error: ") and message in err[-1]


def test_help_lists_every_sampler_and_labels_answer_a_reconstruction(capsys):
    with pytest.raises(SystemExit):
        infer_main(["--help"])
    text = capsys.readouterr().out
    assert "--sampler {cfg,dnp,answer,vlm,npc}" in text and "--sampler-config" in text
    assert "answer (RECONSTRUCTION" in text and "neg_signal" in text and "query_window" in text
