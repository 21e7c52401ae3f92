"""Every row of docs/errors.md, run as written: the command fails with exit code 2 and prints exactly the
row's message as its one line on stderr.

Rows run in a scratch folder holding the fixture files of `FIXTURES`; a new
row needs only its line in the table (and, if it needs one, a new fixture here).
"""

import re
import shlex
from pathlib import Path

import pytest
import torch
from assertions import catalogue_rows as read_catalogue

from renegx.cli import infer_main, main, train_main
from renegx.negatives.bank import EmbeddingBank
from renegx.negatives.embedding import NegativeEmbedding

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = ROOT / "docs" / "errors.md"
ROW = re.compile(r"^\|\s*(\d+)\s*\|[^|]*\|\s*`(?P<command>[^`]+)`\s*\|\s*`(?P<message>.+)`\s*\|\s*$")


class Opaque:
    """Not a tensor container: a checkpoint holding one needs full unpickling."""


def _write_checkpoint(path: Path, state_dict: dict) -> None:
    torch.save({"state_dict": state_dict, "global_step": 1, "pytorch-lightning_version": "2.6.6"}, path)


FIXTURES = {
    "prompts.txt": lambda p: p.write_text("a red circle\na blue square\n"),
    "empty.txt": lambda p: p.write_text("\n  \n"),
    "prompts.csv": lambda p: p.write_text("prompt\na cat\n"),
    "broken.json": lambda p: p.write_text('["a cat",\n'),
    "bad.yaml": lambda p: p.write_text("model:\n  guidance_scale: [\n"),
    "typo.yaml": lambda p: p.write_text("model:\n  guidance: 3.0\n"),
    "garbage.ckpt": lambda p: p.write_bytes(b"this is not a checkpoint"),
    "wide.ckpt": lambda p: _write_checkpoint(p, {"negative_embeds": torch.zeros(1, 77, 768)}),
    "foreign.ckpt": lambda p: _write_checkpoint(p, {"linear.weight": torch.zeros(2, 2)}),
    "wide.safetensors": lambda p: NegativeEmbedding(torch.zeros(1, 77, 768)).save(p),
    "garbage.safetensors": lambda p: p.write_bytes(b"\x00" * 64),
    "foreign_encoder.safetensors": lambda p: NegativeEmbedding(
        torch.zeros(1, 77, 32), metadata={"text_encoder_id": "clip_text_model/h32/l12/v49408"}
    ).save(p),
    "sd15.bin": lambda p: torch.save(torch.zeros(1, 77, 768), p),
    "opaque.pt": lambda p: torch.save({"state_dict": {"a": torch.ones(2)}, "extra": Opaque()}, p),
    "toy.safetensors": lambda p: NegativeEmbedding(
        torch.zeros(1, 77, 64), metadata={"base_model": "toy"}
    ).save(p),
    "finetune.safetensors": lambda p: NegativeEmbedding(
        torch.zeros(1, 77, 32),
        metadata={"base_model": "tiny-finetune", "text_encoder_fingerprint": "s1:0123456789abcdef"},
    ).save(p),
    "global.safetensors": lambda p: NegativeEmbedding(torch.zeros(1, 77, 32)).save(p),
    "old_bank.safetensors": lambda p: EmbeddingBank(
        NegativeEmbedding(torch.zeros(1, 77, 32), metadata={"per_prompt_run": "0123"}), ["a red circle"]
    ).save(p),
    "a_file": lambda p: p.write_text(""),
    "no_unet": lambda p: p.mkdir(),
}

ENTRY_POINTS = {"train.py": train_main, "infer.py": infer_main, "renegx": main}


def catalogue_rows() -> list[tuple[str, str, str]]:
    return read_catalogue(CATALOGUE, ROW)


def test_every_numbered_line_of_the_catalogue_is_a_row_that_runs():
    """A numbered line the row pattern misses (a lost backtick, a stray pipe) would silently not be run."""
    text = CATALOGUE.read_text(encoding="utf-8")
    numbered = [line for line in text.splitlines() if re.match(r"^\|\s*\d+\s*\|", line)]
    missed = [line for line in numbered if not ROW.match(line)]
    assert not missed, missed
    numbers = [number for number, _, _ in catalogue_rows()]
    assert len(numbers) == len(numbered) and len(set(numbers)) == len(numbers), "row numbers repeat"


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    for name, make in FIXTURES.items():
        make(tmp_path / name)
    monkeypatch.chdir(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("number", "command", "message"), [pytest.param(*row, id=f"row{row[0]}") for row in catalogue_rows()]
)
def test_catalogue_row(number, command, message, scratch, capsys):
    program, *args = shlex.split(command)
    assert program in ENTRY_POINTS, f"row {number}: unknown program {program}"
    assert ENTRY_POINTS[program](args) == 2, f"row {number}: {command}"
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and lines[-1] == f"renegx: error: {message}", f"row {number}: {command}"
