"""Text in, batches out: reading a corpus, its vocabulary, the train /
validation split, and the contiguous streams of truncated back-propagation
through time.

Layout of the training streams (B streams, windows of T characters):

    train text  [N_train]  ->  streams [B, S], S = N_train // B
    step k of an epoch reads   x = streams[:, k*T     : k*T + T]      [B, T]
                               y = streams[:, k*T + 1 : k*T + T + 1]  [B, T]

so window k+1 of stream b continues window k of stream b, and the model's
state after window k is the right initial state for window k+1. Which window a
step reads is a function of the step alone (resuming needs no data cursor).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from .errors import CharLMError

BUILTIN_NAME = "pydoc_data.topics"


def read_text(path: str | Path) -> str:
    """A UTF-8 text file's contents; CharLMError for a missing, undecodable or empty file."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CharLMError(f"cannot read the corpus {str(path)!r}: {error.strerror or error}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw[:error.start].count(b"\n") + 1
        raise CharLMError(
            f"the corpus {str(path)!r} is not UTF-8 text: byte {raw[error.start]:#04x} at offset "
            f"{error.start} (line {line}) cannot be decoded ({error.reason}); convert the file to "
            f"UTF-8 (e.g. `iconv -f latin1 -t utf-8`)") from None
    if not text:
        raise CharLMError(f"the corpus {str(path)!r} is empty: give a text file with some characters")
    return text


def builtin_text() -> str:
    """Python's bundled reference documentation (pydoc_data.topics, ~0.5 MB of
    English prose and code), present in every CPython installation."""
    try:
        from pydoc_data.topics import topics
    except ImportError as error:  # some distributions split pydoc_data out
        raise CharLMError(f"this Python has no pydoc_data ({error}); pass --text PATH to train on "
                          "a text file of your own") from None
    return "".join(topics[key] for key in sorted(topics))


def load_corpus(path: str | Path | None) -> tuple[str, str]:
    """(text, name): the file at `path`, or the built-in corpus when None."""
    if path is None:
        return builtin_text(), BUILTIN_NAME
    return read_text(path), str(Path(path).resolve())


def fingerprint(text: str) -> str:
    """SHA-256 of the text, to tell on --resume whether the corpus changed."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


class Vocabulary:
    """The characters of a corpus, in code-point order; ids are their positions."""

    def __init__(self, chars: str) -> None:
        if len(set(chars)) != len(chars):
            raise ValueError("vocabulary characters must be distinct")
        self.chars = chars
        self._index = {ch: i for i, ch in enumerate(chars)}

    @classmethod
    def of(cls, text: str) -> "Vocabulary":
        return cls("".join(sorted(set(text))))

    def __len__(self) -> int:
        return len(self.chars)

    def missing(self, text: str) -> list[str]:
        """Characters of `text` that are not in the vocabulary (sorted, distinct)."""
        return sorted(set(text) - self._index.keys())

    def encode(self, text: str) -> Tensor:
        """text -> int64 ids [len(text)]; CharLMError listing unknown characters."""
        unknown = self.missing(text)
        if unknown:
            shown = ", ".join(repr(ch) for ch in unknown[:20]) + (", ..." if len(unknown) > 20 else "")
            raise CharLMError(f"{len(unknown)} character(s) not in the model's vocabulary of "
                              f"{len(self)}: {shown}")
        return torch.tensor([self._index[ch] for ch in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[i] for i in ids)


@dataclass(frozen=True)
class Split:
    """A corpus encoded once; training text first, validation text after it."""

    data: Tensor  # [N] int64 ids of the whole text
    n_train: int

    @property
    def n_val(self) -> int:
        return self.data.numel() - self.n_train


def split(data: Tensor, val_fraction: float) -> Split:
    """Contiguous split: the last `val_fraction` of the text is held out."""
    if not 0 < val_fraction < 1:
        raise CharLMError(f"the validation fraction must be in (0, 1), got {val_fraction}")
    n_val = int(data.numel() * val_fraction)
    if n_val < 1:
        raise CharLMError(f"the corpus has {data.numel()} characters: too few to hold out "
                          f"{val_fraction:.0%} for validation")
    return Split(data, data.numel() - n_val)


class TrainStreams:
    """The B training streams of one process: rank r of `world` holds streams
    [r*B/world, (r+1)*B/world) of the global batch."""

    def __init__(self, split: Split, batch_size: int, seq_len: int, rank: int = 0, world: int = 1):
        length = split.n_train // batch_size  # S, characters per stream
        if length < seq_len + 1:
            need = batch_size * (seq_len + 1)
            raise CharLMError(
                f"the corpus is shorter than one batch: {split.n_train} training characters, but "
                f"{batch_size} streams x (seq_len {seq_len} + 1) need {need}; use a longer text, "
                f"or lower --batch-size / --seq-len")
        if batch_size % world:
            raise CharLMError(f"the batch size {batch_size} must be a multiple of the number of "
                              f"processes ({world}): each takes an equal slice of the streams")
        local = batch_size // world
        streams = split.data[:length * batch_size].view(batch_size, length)  # [B, S]
        self.streams = streams[rank * local:(rank + 1) * local]               # [B/world, S]
        self.seq_len = seq_len
        self.steps_per_epoch = (length - 1) // seq_len

    def to(self, device) -> "TrainStreams":
        self.streams = self.streams.to(device)
        return self

    def batch(self, step: int) -> tuple[Tensor, Tensor, bool]:
        """Inputs [b, T] and targets [b, T] of global step `step` (0-based), and
        whether this window starts an epoch (so the carried state must restart)."""
        k = step % self.steps_per_epoch
        start = k * self.seq_len
        x = self.streams[:, start:start + self.seq_len]
        y = self.streams[:, start + 1:start + self.seq_len + 1]
        return x, y, k == 0


class EvalStreams:
    """The validation text as streams for scoring every held-out character once.

    The held-out text [N_val] is cut into `count` contiguous pieces; each piece
    is preceded by `burn_in` characters of the text before it (the end of the
    training text for the first), which set the model's state but are not
    scored, so no piece starts from an empty state. Rows are given to process
    `rank` of `world` round-robin.

    inputs / targets: [rows, burn_in + L]; scored: [rows, burn_in + L] bool.
    """

    def __init__(self, split: Split, count: int, burn_in: int, rank: int = 0, world: int = 1):
        count = max(1, min(count, split.n_val))
        piece = split.n_val // count  # L; the last n_val % count characters are not scored
        if split.n_train < burn_in + 1:
            raise CharLMError(f"the training text ({split.n_train} characters) is shorter than the "
                              f"evaluation burn-in ({burn_in} + 1)")
        starts = [split.n_train + i * piece for i in range(count)][rank::world]
        width = burn_in + piece
        # Targets are characters [start - burn_in, start + L); inputs are those one before.
        self.targets = torch.stack([split.data[s - burn_in:s + piece] for s in starts]) \
            if starts else split.data.new_empty(0, width)
        self.inputs = torch.stack([split.data[s - burn_in - 1:s + piece - 1] for s in starts]) \
            if starts else split.data.new_empty(0, width)
        self.scored = torch.zeros(width, dtype=torch.bool)
        self.scored[burn_in:] = True
        self.chars = piece * len(starts)

    def to(self, device) -> "EvalStreams":
        self.inputs, self.targets = self.inputs.to(device), self.targets.to(device)
        self.scored = self.scored.to(device)
        return self
