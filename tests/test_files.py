import errno
import json
import os

import pytest

from renegx import files
from renegx.files import (
    OutputError,
    atomic_path,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    ensure_writable_dir,
)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name)


def test_atomic_path_replaces_the_file_through_a_temporary_beside_it(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as temporary:
        assert temporary.parent == tmp_path and temporary.name.startswith(".out.bin.tmp-")
        assert not temporary.exists()
        temporary.write_bytes(b"new")
        assert target.read_bytes() == b"old"
    assert target.read_bytes() == b"new"
    assert _leftovers(tmp_path) == []


def test_writers_write_bytes_text_and_json(tmp_path):
    atomic_write_bytes(tmp_path / "a.bin", b"\x00\x01")
    atomic_write_text(tmp_path / "b.txt", "négatif")
    atomic_write_json(tmp_path / "c.json", {"b": 1, "a": [1, 2]})
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "b.txt").read_text(encoding="utf-8") == "négatif"
    text = (tmp_path / "c.json").read_text()
    assert text.endswith("}\n") and text.index('"b"') < text.index('"a"')
    assert json.loads(text) == {"b": 1, "a": [1, 2]}
    assert _leftovers(tmp_path) == []


def test_exception_inside_the_context_keeps_the_old_file(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"previous content")
    with pytest.raises(RuntimeError, match="crash"), atomic_path(target) as temporary:
        temporary.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert target.read_bytes() == b"previous content"
    assert _leftovers(tmp_path) == []


def test_failed_rename_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.json"
    target.write_bytes(b'{"old": true}\n')

    def disk_full(src, dst):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(files.os, "replace", disk_full)
    with pytest.raises(OSError) as caught:
        atomic_write_json(target, {"new": True})
    assert caught.value.errno == errno.ENOSPC
    assert target.read_bytes() == b'{"old": true}\n'
    assert _leftovers(tmp_path) == []


def test_ensure_writable_dir_creates_parents_and_leaves_no_probe(tmp_path):
    folder = ensure_writable_dir(tmp_path / "a" / "b")
    assert folder.is_dir() and list(folder.iterdir()) == []
    assert ensure_writable_dir(str(folder)) == folder


def test_ensure_writable_dir_under_a_file_fails_in_one_line(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OutputError) as caught:
        ensure_writable_dir(blocker / "out")
    message = str(caught.value)
    assert message.startswith(f"output directory {blocker / 'out'} is not writable: ")
    assert "Not a directory" in message and len(message.splitlines()) == 1


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root ignores permissions")
def test_ensure_writable_dir_read_only_fails_in_one_line(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OutputError, match="is not writable: Permission denied") as caught:
            ensure_writable_dir(folder)
        assert len(str(caught.value).splitlines()) == 1
    finally:
        folder.chmod(0o700)
