"""Atomic file writes: a file either keeps its old bytes or gets all of its new ones, never half.

Every artefact renegx writes (embeddings, configs, reports) goes through `atomic_path`, so a crash, a full
disk or Ctrl-C mid-write never leaves a truncated file where a good one was.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class OutputError(OSError):
    """An output location renegx cannot write to; the message is one line."""


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The caller writes the whole file to the yielded path (which does not exist yet). On normal exit the file
    is fsynced and `os.replace`d onto `path`; on any exception the temporary file is deleted, the exception
    propagates and whatever was at `path` before stays untouched.
    """
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        yield temporary
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        # Some writers (safetensors) make private 0600 files: give it the mode any new file of this user gets.
        os.chmod(temporary, 0o666 & ~_umask())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_directory(directory: Path) -> None:
    """Make a rename inside `directory` durable (POSIX); skipped where directories cannot be fsynced."""
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically, UTF-8 encoded."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as JSON (indent 2, keys in insertion order, trailing newline) to `path` atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def ensure_writable_dir(path: str | os.PathLike) -> Path:
    """Create directory `path` (with parents) and check a file can be written in it; return it as a Path.

    Raises `OutputError` naming the directory and the reason when it cannot be created or written.
    """
    path = Path(path)
    probe = path / f".renegx-write-probe-{secrets.token_hex(4)}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe.touch(exist_ok=False)
        probe.unlink()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise OutputError(f"output directory {path} is not writable: {reason}") from err
    return path


@contextmanager
def removed_if_left_empty(path: str | os.PathLike) -> Iterator[Path]:
    """`ensure_writable_dir(path)` for the duration of a job: a folder the job created is removed again when
    the job fails and leaves it empty, and so are the parents it created, so a failed command leaves nothing
    behind."""
    path = Path(path)
    created = [folder for folder in (path, *path.parents) if not folder.exists()]
    folder = ensure_writable_dir(path)
    try:
        yield folder
    except BaseException:
        with contextlib.suppress(OSError):
            for empty in created:  # deepest first; rmdir removes only an empty folder
                empty.rmdir()
        raise


def write_image_with_sidecar(path: str | os.PathLike, image, sidecar: dict, jpeg_quality: int = 95) -> Path:
    """Write a PIL image (PNG, or JPEG at `jpeg_quality` for a `.jpg` path), then its JSON sidecar beside
    it, each atomically: a sidecar exists only for a complete image."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    jpeg = path.suffix.lower() in (".jpg", ".jpeg")
    with atomic_path(path) as temporary:
        if jpeg:
            image.convert("RGB").save(temporary, format="JPEG", quality=jpeg_quality)
        else:
            image.save(temporary, format="PNG")
    atomic_write_json(path.with_suffix(".json"), {"image": path.name, **sidecar})
    return path
