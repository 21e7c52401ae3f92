"""Atomic writes under a failing disk: a write that fails (full disk at the rename, or half-way through the
data) leaves the previous checkpoint, embedding, image and sidecar byte for byte as they were; reading a bad
checkpoint is a one-line error."""

import errno
import os

import pytest
import torch

from renegx.cli import infer_main
from renegx.files import OutputError
from renegx.negatives.embedding import NegativeEmbedding
from renegx.train import checkpoint_io
from renegx.train.checkpoint_io import AtomicCheckpointIO, CheckpointError

DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


@pytest.fixture
def full_disk_at_rename(monkeypatch):
    """`os.replace` fails with ENOSPC for targets whose name ends with one of the given suffixes."""

    def arm(*suffixes):
        real = os.replace

        def replace(src, dst, *args, **kwargs):
            if str(dst).endswith(suffixes):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(src), None, str(dst))
            return real(src, dst, *args, **kwargs)

        monkeypatch.setattr(os, "replace", replace)

    return arm


def _checkpoint(value: float) -> dict:
    return {"state_dict": {"negative_embeds": torch.full((1, 4, 8), value)}, "global_step": int(value)}


def test_checkpoint_round_trip_leaves_no_temporary(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint(_checkpoint(1.0), tmp_path / "sub" / "last.ckpt")
    loaded = io.load_checkpoint(tmp_path / "sub" / "last.ckpt")
    assert loaded["global_step"] == 1 and torch.equal(
        loaded["state_dict"]["negative_embeds"], torch.ones(1, 4, 8)
    )
    assert _leftovers(tmp_path / "sub") == []


def test_full_disk_at_rename_keeps_the_previous_checkpoint(tmp_path, full_disk_at_rename):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), path)
    before = path.read_bytes()
    full_disk_at_rename(".ckpt")
    with pytest.raises(OutputError, match=f"cannot write checkpoint {path}: No space left on device"):
        io.save_checkpoint(_checkpoint(2.0), path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


def test_full_disk_mid_write_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    io, path = AtomicCheckpointIO(), tmp_path / "last.ckpt"
    io.save_checkpoint(_checkpoint(1.0), path)
    before = path.read_bytes()

    def half_then_full(obj, target):
        with open(target, "wb") as file:
            file.write(before[: len(before) // 2])
        raise DISK_FULL

    monkeypatch.setattr(checkpoint_io.torch, "save", half_then_full)
    with pytest.raises(OutputError, match="No space left on device"):
        io.save_checkpoint(_checkpoint(2.0), path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "checkpoint not found: {path}"),
        (b"not a checkpoint", "cannot read checkpoint {path}: not a complete PyTorch checkpoint"),
        ("truncated", "cannot read checkpoint {path}: not a complete PyTorch checkpoint"),
        ("no state_dict", "checkpoint {path} is not a Lightning training checkpoint (no state_dict)"),
    ],
)
def test_bad_checkpoints_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.ckpt"
    if content == "truncated":
        torch.save(_checkpoint(1.0), path)
        path.write_bytes(path.read_bytes()[:-200])
    elif content == "no state_dict":
        torch.save({"weights": torch.zeros(2)}, path)
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError) as err:
        AtomicCheckpointIO().load_checkpoint(path)
    assert str(err.value).startswith(message.format(path=path)) and len(str(err.value).splitlines()) == 1


def test_full_disk_keeps_the_previous_embedding(tmp_path, full_disk_at_rename):
    path = tmp_path / "negative.safetensors"
    NegativeEmbedding(torch.zeros(1, 77, 32)).save(path)
    before = path.read_bytes()
    full_disk_at_rename(".safetensors")
    with pytest.raises(OSError, match="No space left on device"):
        NegativeEmbedding(torch.ones(1, 77, 32)).save(path)
    assert path.read_bytes() == before and _leftovers(tmp_path) == []


@pytest.mark.parametrize("failing", [".png", ".json"])
def test_full_disk_keeps_the_previous_image_and_sidecar(tmp_path, full_disk_at_rename, capsys, failing):
    out = tmp_path / "out"
    args = ["--prompt", "a cat", "--steps", "2", "--out", str(out)]
    assert infer_main([*args, "--negative", "null"]) == 0
    png, sidecar = (out / "0000_seed0.png").read_bytes(), (out / "0000_seed0.json").read_bytes()
    full_disk_at_rename(failing)
    assert infer_main([*args, "--negative", "text:blurry", "--seeds", "7"]) == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert error == f"renegx: error: cannot write {out / ('0000_seed7' + failing)}: No space left on device"
    assert (out / "0000_seed0.json").read_bytes() == sidecar and (out / "0000_seed0.png").read_bytes() == png
    if failing == ".png":  # never a sidecar without its image: it is written after the image
        assert not (out / "0000_seed7.json").exists()
    assert _leftovers(out) == []
