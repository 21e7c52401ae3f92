"""`make gpu-check` (bench/gpu_check.py): one line without CUDA, and every section's code path on the tiny
model on a CPU (`--quick`), so that the script a first GPU runs has run before."""

import json
from unittest import mock

import pytest

from bench import gpu_check


def test_without_cuda_it_exits_with_one_line(tmp_path, capsys):
    out = tmp_path / "gpu-check.json"
    with mock.patch("torch.cuda.is_available", return_value=False):
        assert gpu_check.main(["--out", str(out)]) == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("renegx gpu-check: no CUDA device") and "\n" not in error
    assert not out.exists()


def _quick(tmp_path, sections: str) -> tuple[dict, str]:
    out, printed = tmp_path / "gpu-check.json", []
    argv = ["--model", "tiny", "--device", "cpu", "--quick", "--batch-size", "1", "--sections", sections]
    argv += ["--out", str(out)]
    assert gpu_check.main(argv, report=printed.append) == 0
    return json.loads(out.read_text()), "\n".join(printed)


@pytest.mark.slow
def test_quick_cpu_run_measures_every_setting_per_prompt_tuning_and_the_profile(tmp_path, one_thread):
    result, printed = _quick(tmp_path, "step,cosine,per-prompt,profile")
    rows = {(row["section"], row["setting"]): row for row in result["rows"]}
    for name in ("shipped", "fp32 weights", "bf16, no checkpointing", "shipped, 2x micro-batch"):
        row = rows[("step", name)]
        assert row["step_s"] > 0 and row["samples_s"] > 0 and row["step_tflop"] > 0, name
    assert result["skipped"] == [
        "step: bf16 + compile: compiles for minutes; only on a GPU run without --quick"
    ]
    assert any(setting.startswith("best: ") for _, setting in rows)
    assert rows[("cosine", "shipped vs fp32")]["cosine"] > 0.99
    assert rows[("per-prompt", "batched / one at a time")]["speedup"] > 0
    assert rows[("profile", "shipped, one step")]["host_op_s"] > 0
    assert printed.splitlines()[0].startswith("section | setting | step_s")


@pytest.mark.slow
def test_quick_cpu_ddp_fit_is_identical_across_ranks_and_resumes(tmp_path):
    result, _ = _quick(tmp_path, "ddp")
    (row,) = result["rows"]
    assert row["ranks_identical"] and row["resume_continues"], row
    assert (row["resumed_from"], row["resumed_to"]) == ([2], [3])
