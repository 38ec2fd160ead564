"""Sampling text from a trained model, one character at a time.

The priming text runs through the model's FusedLSTM layers in one call; after
that every character is one step of a stack of FusedLSTMCells (one per
layer) that share the trained layers' parameters, carrying (h, c) between
steps: each new character costs one cell step per layer, never a rerun of the
text so far.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from torch import Tensor

from ..cell import FusedLSTMCell
from . import checkpoint as ckpt
from .config import TrainConfig
from .corpus import Vocabulary
from .distributed import check_backend
from .errors import CharLMError
from .model import CharLM, State

DEFAULT_PRIME_CHARS = 100

CellState = list[tuple[Tensor, Tensor]]  # (h [B, H_l], c [B, H_l]) per layer l


class CellStack:
    """A CharLM seen one step at a time: FusedLSTMCell l holds (shares, does not copy)
    the weights of the model's layer l, so both views always agree.

        step(idx [B], state) -> logits [B, V], state
    """

    def __init__(self, model: CharLM, backend: str = "auto") -> None:
        self.model = model
        self.cells: list[FusedLSTMCell] = []
        for lstm in model.groups:  # FusedLSTM or nn.LSTM: the same parameter names
            for layer in range(lstm.num_layers):
                weight = getattr(lstm, f"weight_ih_l{layer}")
                # Built on the meta device (no memory), then given the layer's own parameters.
                cell = FusedLSTMCell(weight.size(1), lstm.hidden_size, bias=lstm.bias, device="meta",
                                     dtype=weight.dtype, backend=backend)
                for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                    if getattr(cell, name) is not None:
                        setattr(cell, name, getattr(lstm, f"{name}_l{layer}"))
                self.cells.append(cell)

    @staticmethod
    def per_layer(state: State) -> CellState:
        """The model's state (one (h, c) [L_k, B, H_k] per layer group) as one (h, c) per layer."""
        return [(h[k], c[k]) for h, c in state for k in range(h.size(0))]

    def step(self, idx: Tensor, state: CellState) -> tuple[Tensor, CellState]:
        x = self.model.embed(idx)  # [B, E]
        new_state = []
        for cell, hc in zip(self.cells, state):
            h, c = cell(x, hc)
            new_state.append((h, c))
            x = h
        return self.model.head(x), new_state


def load_model(checkpoint: dict, device: torch.device, backend: str = "auto") -> tuple[CharLM, Vocabulary]:
    """The checkpoint's model (in eval mode, on FusedLSTM whatever it was trained on:
    the parameters have the same names) and its vocabulary."""
    config = TrainConfig.from_dict(checkpoint["config"])
    vocab = Vocabulary(checkpoint["vocab"])
    model = CharLM(len(vocab), config.embed_dim, config.hidden_sizes, config.dropout, "fused", backend)
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval(), vocab


def default_prime(checkpoint: dict, seed: int | None, length: int = DEFAULT_PRIME_CHARS) -> str:
    """A random slice of the held-out text kept in the checkpoint, starting at a line when it can."""
    pool: str = checkpoint["prime_pool"]
    if len(pool) <= length:
        return pool
    rng = random.Random(seed)
    line_starts = [i + 1 for i, ch in enumerate(pool[:-length - 1]) if ch == "\n"]
    start = rng.choice(line_starts) if line_starts else rng.randrange(len(pool) - length)
    return pool[start:start + length]


def pick(logits: Tensor, temperature: float, top_k: int | None, generator: torch.Generator) -> int:
    """The next character's id from logits [V]: argmax at temperature 0, else a draw from
    softmax(logits / temperature) restricted to the top_k most likely characters."""
    if temperature == 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.numel():
        threshold = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < threshold, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs, 1, generator=generator))


def check_settings(temperature: float, top_k: int | None, length: int) -> None:
    if not temperature >= 0:  # also rejects NaN
        raise CharLMError(f"temperature must be >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise CharLMError(f"top-k must be at least 1, got {top_k}")
    if length < 0:
        raise CharLMError(f"length must be >= 0, got {length}")


def generate(model: CharLM, vocab: Vocabulary, prime: str, length: int = 1000, temperature: float = 1.0,
             top_k: int | None = None, seed: int | None = None, backend: str = "auto") -> Iterator[str]:
    """The `length` characters that follow `prime`, one at a time as they are drawn
    (arguments are checked at the call). The same seed on the same device gives the
    same text."""
    check_settings(temperature, top_k, length)
    if not prime:
        raise CharLMError("the priming text is empty: give at least one character")
    unknown = vocab.missing(prime)
    if unknown:
        raise CharLMError(f"the priming text has {len(unknown)} character(s) the model never saw: "
                          + ", ".join(repr(ch) for ch in unknown)
                          + f". Its vocabulary: {vocab.chars!r}")
    device = model.head.weight.device
    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    return _stream(CellStack(model, backend), vocab, prime, length, temperature, top_k, generator)


def _stream(stack: CellStack, vocab: Vocabulary, prime: str, length: int, temperature: float,
            top_k: int | None, generator: torch.Generator) -> Iterator[str]:
    model, device = stack.model, stack.model.head.weight.device
    with torch.inference_mode():
        logits, state = model(vocab.encode(prime).to(device)[None])  # [1, P, V]
        logits, cell_state = logits[0, -1], CellStack.per_layer(state)
        for _ in range(length):
            nxt = pick(logits, temperature, top_k, generator)
            yield vocab.chars[nxt]
            logits, cell_state = stack.step(torch.tensor([nxt], device=device), cell_state)
            logits = logits[0]


def sample(checkpoint_path, prime: str | None = None, length: int = 1000, temperature: float = 1.0,
           top_k: int | None = None, seed: int | None = None, device: str = "cpu",
           backend: str = "auto") -> tuple[str, Iterator[str]]:
    """(priming text, its continuation as a stream of characters) from a checkpoint
    file or run folder (its best.pt). Without `prime`, a random slice of the held-out
    text (chosen by `seed`)."""
    check_settings(temperature, top_k, length)
    device = torch.device(device)
    check_backend(backend, device)
    file = ckpt.resolve(checkpoint_path)
    checkpoint = ckpt.load(file, needs=ckpt.SAMPLING_KEYS + (() if prime is not None else ("prime_pool",)))
    with ckpt.reading(file, "configuration, vocabulary and weights"):
        model, vocab = load_model(checkpoint, device, backend)
    if prime is None:
        with ckpt.reading(file, "held-out text"):
            prime = default_prime(checkpoint, seed)
    return prime, generate(model, vocab, prime, length, temperature, top_k, seed, backend)
