"""Durable file operations shared by checkpoints and datasets: a file is either entirely there
(and on disk) or not there at all."""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Iterator
from pathlib import Path


def fsync_file(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Persist a directory's entries (a rename is durable only after this)."""
    with contextlib.suppress(OSError):  # some filesystems do not support fsync on directories
        fsync_file(path)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write to a temporary file, fsync, rename over ``path``, fsync the directory."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def replace_directory(new: Path, out: Path) -> None:
    """Put the finished directory ``new`` in ``out``'s place: a reader sees the old directory or the new one,
    never a mixture (the old one is renamed aside first and removed after)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        new.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(out)
    fsync_dir(out.parent)


@contextlib.contextmanager
def staged_directory(out: str | Path) -> Iterator[Path]:
    """Build a directory in a temporary sibling of ``out``; when the block succeeds, fsync its files and put
    it in ``out``'s place (:func:`replace_directory`); when it fails, remove it and leave ``out`` untouched."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                fsync_file(f)
        fsync_dir(tmp)
        replace_directory(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def writable_problem(path: str | Path) -> str | None:
    """Why files cannot be created in ``path`` (created if missing), or None if they can."""
    path = Path(path).expanduser()
    probe = path / f".ptbr-write-test-{os.getpid()}"
    try:
        path.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as f:
            f.write(b"ok")
            f.flush()
            os.fsync(f.fileno())
        probe.unlink()
    except OSError as exc:
        with contextlib.suppress(OSError):
            probe.unlink()
        return exc.strerror or str(exc)
    return None
