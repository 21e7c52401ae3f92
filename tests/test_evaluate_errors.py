"""The evaluate rows of docs/errors.md (E1, E2, ...), run as written: exit code 2 and exactly the row's
message as the one line on stderr."""

import re
import shlex
from pathlib import Path

import pytest
import torch
from assertions import catalogue_rows

from renegx.evaluate.__main__ import evaluate_main
from renegx.negatives.embedding import NegativeEmbedding

CATALOGUE = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
ROW = re.compile(r"^\|\s*(E\d+)\s*\|[^|]*\|\s*`(?P<command>[^`]+)`\s*\|\s*`(?P<message>.+)`\s*\|\s*$")
PROGRAM = ["renegx", "evaluate"]

FIXTURES = {
    "prompts.txt": lambda p: p.write_text("a red circle\na blue square\n"),
    "typo_eval.yaml": lambda p: p.write_text("model: tiny\nguidance: 3\n"),
    "wide.safetensors": lambda p: NegativeEmbedding(torch.zeros(1, 77, 768)).save(p),
    "finetune.safetensors": lambda p: NegativeEmbedding(
        torch.zeros(1, 77, 32),
        metadata={"base_model": "tiny-finetune", "text_encoder_fingerprint": "s1:0123456789abcdef"},
    ).save(p),
    "a_file": lambda p: p.write_text(""),
}


def evaluate_rows() -> list[tuple[str, str, str]]:
    return catalogue_rows(CATALOGUE, ROW)


def test_the_catalogue_has_evaluate_rows():
    rows = evaluate_rows()
    assert len(rows) >= 10
    assert len({number for number, _, _ in rows}) == len(rows)


@pytest.mark.parametrize(
    ("number", "command", "message"), evaluate_rows(), ids=lambda v: v if v[:1] == "E" else ""
)
def test_evaluate_row(number, command, message, tmp_path, monkeypatch, capsys, one_thread):
    for name, make in FIXTURES.items():
        make(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    words = shlex.split(command)
    assert words[:2] == PROGRAM, f"row {number}: {command}"
    assert evaluate_main(words[2:]) == 2, f"row {number}: {command}"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1] == f"renegx: error: {message}", f"row {number}: {command}"
