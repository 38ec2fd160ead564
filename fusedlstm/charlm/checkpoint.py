"""Checkpoints: written atomically, loaded safely.

A checkpoint is a dict of plain values and tensors (see train.py for its
keys), so it loads with torch.load(weights_only=True), and onto the CPU, so a
checkpoint written on a GPU loads on a machine without one.

Writing goes to a temporary file in the same folder, flushed to disk, then
renamed over the target: a crash or kill at any moment leaves either the old
file or the new one, never a partial one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import secrets
import zipfile
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
    """Delete the temporary files that a killed writer left in a run folder: save_atomic's
    (.best.pt.*.tmp, .last.pt.*.tmp) and those of metrics.jsonl and loss.png."""
    for pattern in (f".{BEST}.*.tmp", f".{LAST}.*.tmp", "metrics.jsonl.tmp", "loss.tmp.png"):
        for tmp in Path(folder).glob(pattern):
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


OTHER_CHECKPOINT = "The other checkpoint of its run folder (best.pt or last.pt) may still be whole"

# What a checkpoint must hold to be sampled from, and to be resumed.
SAMPLING_KEYS = ("config", "vocab", "model")
RESUMING_KEYS = (*SAMPLING_KEYS, "corpus", "prime_pool", "step", "optimizer", "train_state", "rng",
                 "progress")


def load(path: str | Path, prefer: str = BEST, needs: tuple[str, ...] = ()) -> dict:
    """The checkpoint at `path` (file or run folder), tensors on the CPU; CharLMError
    naming the file when it is damaged, foreign, or lacks one of `needs`."""
    file = resolve(path, prefer)
    if not zipfile.is_zipfile(file):  # torch.save writes a zip archive
        raise CharLMError(f"the checkpoint {str(file)!r} is damaged: it is not a PyTorch checkpoint "
                          f"file (truncated, overwritten or never one). {OTHER_CHECKPOINT}")
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CharLMError(f"{str(file)!r} is not a fusedlstm char-LM checkpoint: it holds Python "
                          "objects that are not loaded, for safety (weights_only)") from None
    except Exception as error:  # an unreadable file becomes a message, not a traceback
        raise CharLMError(f"the checkpoint {str(file)!r} is damaged: {first_sentence(error)}. "
                          f"{OTHER_CHECKPOINT}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CharLMError(f"{str(file)!r} is not a fusedlstm char-LM checkpoint (format {FORMAT})")
    missing = [key for key in needs if key not in checkpoint]
    if missing:
        raise CharLMError(f"the checkpoint {str(file)!r} is incomplete: it has no "
                          f"{', '.join(map(repr, missing))}. {OTHER_CHECKPOINT}")
    return checkpoint


def first_sentence(error: BaseException) -> str:
    """The gist of an error's message, on one line (a header ending in ':' keeps its
    first item: load_state_dict's 'Error(s) in loading ...:' + 'size mismatch ...')."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text.split(". ")[0].rstrip(".")


@contextlib.contextmanager
def reading(file: str | Path, what: str):
    """Errors raised while a checkpoint's `what` is put to use (weights that do not fit
    the saved configuration, an optimizer state of another model, ...) -> CharLMError
    naming the file."""
    try:
        yield
    except (CharLMError, KeyError, IndexError, TypeError, ValueError, RuntimeError, AttributeError) as error:
        reason = f"missing {error}" if isinstance(error, KeyError) else first_sentence(error)
        raise CharLMError(f"the checkpoint {str(file)!r} is damaged or inconsistent: its {what} cannot "
                          f"be used ({reason}). {OTHER_CHECKPOINT}") from None
