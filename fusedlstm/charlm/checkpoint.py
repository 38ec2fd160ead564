"""Checkpoints: written atomically, loaded safely.

A checkpoint is a dict of plain values and tensors (see train.py for its
keys), so it loads with torch.load(weights_only=True), and onto the CPU, so a
checkpoint written on a GPU loads on a machine without one.

Writing goes to a temporary file in the same folder, flushed to disk, then
renamed over the target: a crash or kill at any moment leaves either the old
file or the new one, never a partial one.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import torch

from .errors import CharLMError

FORMAT = "fusedlstm.charlm/1"
BEST, LAST = "best.pt", "last.pt"


def save_atomic(obj: dict, path: str | Path) -> None:
    """torch.save(obj) to `path`, all or nothing."""
    path = Path(path)
    # Like mkstemp (a new, unique file), but with the permissions the umask gives any file.
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_partial_writes(folder: str | Path) -> None:
    """Delete temporary files that a killed save_atomic left in a run folder."""
    for name in (BEST, LAST):
        for tmp in Path(folder).glob(f".{name}.*.tmp"):
            tmp.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems refuse fsync on a folder; the rename is done either way
    finally:
        os.close(fd)


def resolve(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file from a file or a run folder (its `prefer` file, else the other)."""
    path = Path(path)
    if path.is_dir():
        for name in (prefer, LAST if prefer == BEST else BEST):
            if (path / name).is_file():
                return path / name
        raise CharLMError(f"no checkpoint in {str(path)!r}: expected {BEST} or {LAST} there")
    if not path.is_file():
        raise CharLMError(f"no checkpoint at {str(path)!r}: give a run folder or a .pt file")
    return path


def load(path: str | Path, prefer: str = BEST) -> dict:
    """The checkpoint at `path` (file or run folder), tensors on the CPU."""
    file = resolve(path, prefer)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as error:  # an unreadable file becomes a message, not a traceback
        raise CharLMError(f"cannot load the checkpoint {str(file)!r}: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CharLMError(f"{str(file)!r} is not a fusedlstm char-LM checkpoint (format {FORMAT})")
    return checkpoint
