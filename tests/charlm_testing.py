"""Helpers of the char-LM tests: small generated corpora, tiny configurations,
and one CPU thread (the machines running the suite are small and shared; the
results are the same with any thread count)."""

from __future__ import annotations

import math
import os
import random
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch

from fusedlstm.charlm.config import make_config

SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "be", "du")


def make_corpus(path: Path, chars: int = 20_000, seed: int = 0) -> str:
    """Lines of made-up words (Zipf-distributed) ending in full stops: easy to learn
    beyond character frequencies, since every word is a fixed spelling."""
    rng = random.Random(seed)
    words = ["".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 3))) for _ in range(40)]
    weights = [1 / (k + 1) for k in range(len(words))]
    lines, size = [], 0
    while size < chars:
        line = " ".join(rng.choices(words, weights, k=rng.randint(4, 9))).capitalize() + ".\n"
        lines.append(line)
        size += len(line)
    text = "".join(lines)[:chars]
    path.write_text(text, encoding="utf-8")
    return text


def unigram_entropy(text: str) -> float:
    """Entropy of the character frequencies of `text`, nats per character."""
    counts = Counter(text)
    return -sum(n / len(text) * math.log(n / len(text)) for n in counts.values())


def tiny_config(text: Path, out: Path, **overrides):
    values = dict(text=str(text), out=str(out), embed_dim=16, hidden_sizes=(48,), dropout=0.0,
                  weight_dropout=0.0, variational_dropout=0.0,
                  seq_len=16, batch_size=8, lr=1e-2, warmup_steps=5, max_steps=40, eval_interval=10,
                  eval_streams=4, device="cpu", precision="fp32", seed=1)
    values.update(overrides)
    return make_config(**values)


def subprocess_env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def python() -> str:
    return sys.executable


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
