"""Char-LM sampling speed on the CPU: characters per second, one sequence, drawing
at temperature 1, through

    fused        our generator's step: a FusedLSTMCell per layer (fusedlstm.charlm.sample.CellStack)
    nn.LSTM      torch.nn.LSTM called on one character at a time, state carried
    nn.LSTMCell  a torch.nn.LSTMCell per layer

all with the same weights, embedding, output layer and drawing code, so only the
recurrent step differs. The model is a checkpoint's (--checkpoint) or a freshly
initialised one of a preset's shape (the speed does not depend on the weights).

    python benchmarks/charlm_sampling.py --preset default --length 2000 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from fusedlstm.charlm import checkpoint as ckpt
from fusedlstm.charlm.config import make_config
from fusedlstm.charlm.model import CharLM
from fusedlstm.charlm.sample import CellStack, load_model, pick


def nn_lstm_step(model: CharLM):
    """Step through nn.LSTM copies of the model's layer groups, one character per call."""
    groups = [lstm.to_lstm() for lstm in model.groups]

    def step(idx, state):
        x = model.embed(idx)[:, None]  # [1, 1, E]
        new_state = []
        for lstm, hc in zip(groups, state):
            x, hc = lstm(x, hc)
            new_state.append(hc)
        return model.head(x[:, 0]), new_state

    return step, lambda state: state


def nn_cell_step(model: CharLM):
    """Step through nn.LSTMCell copies of every layer."""
    cells = [cell.to_lstm_cell() for cell in CellStack(model).cells]

    def step(idx, state):
        x = model.embed(idx)
        new_state = []
        for cell, hc in zip(cells, state):
            h, c = cell(x, hc)
            new_state.append((h, c))
            x = h
        return model.head(x), new_state

    return step, CellStack.per_layer


def fused_step(model: CharLM):
    return CellStack(model).step, CellStack.per_layer


def chars_per_second(model: CharLM, make_step, length: int, seed: int) -> float:
    step, to_step_state = make_step(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        logits, state = model(torch.zeros(1, 50, dtype=torch.long))  # a 50-character prime
        logits, state = logits[0, -1], to_step_state(state)
        start = time.perf_counter()
        for _ in range(length):
            nxt = pick(logits, 1.0, None, generator)
            logits, state = step(torch.tensor([nxt]), state)
            logits = logits[0]
        return length / (time.perf_counter() - start)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--checkpoint", help="run folder or checkpoint file")
    source.add_argument("--preset", default="default", help="model shape when no checkpoint (default: default)")
    parser.add_argument("--vocab", type=int, default=65, help="vocabulary size without a checkpoint (default 65)")
    parser.add_argument("--length", type=int, default=2000, help="characters per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per implementation (median kept)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.checkpoint:
        model, vocab = load_model(ckpt.load(args.checkpoint), torch.device("cpu"))
        shape = f"checkpoint {args.checkpoint}"
        vocab_size = len(vocab)
    else:
        config = make_config(args.preset)
        torch.manual_seed(0)
        model = CharLM(args.vocab, config.embed_dim, config.hidden_sizes).eval()
        shape, vocab_size = f"preset {args.preset}", args.vocab
    sizes = "x".join(str(g.hidden_size) for g in model.groups for _ in range(g.num_layers))
    impls = {"fused (FusedLSTMCell)": fused_step, "nn.LSTM, one step per call": nn_lstm_step,
             "nn.LSTMCell": nn_cell_step}
    for make_step in impls.values():
        chars_per_second(model, make_step, 200, seed=0)  # warm-up
    # Round-robin, so that a change in the machine's load hits every implementation alike.
    runs = {name: [] for name in impls}
    for k in range(args.repeats):
        for name, make_step in impls.items():
            runs[name].append(chars_per_second(model, make_step, args.length, seed=k))
    results = {name: {"median": statistics.median(r), "runs": r} for name, r in runs.items()}
    print(f"Sampling, {shape} (layers {sizes}, vocabulary {vocab_size}), batch 1, float32, CPU, "
          f"{torch.get_num_threads()} thread(s), torch {torch.__version__}, {args.length} characters x "
          f"{args.repeats} (median), load average {os.getloadavg()[0]:.1f}\n")
    print("| step through | chars/s (median) | range |\n|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['median']:,.0f} | {min(r['runs']):,.0f}-{max(r['runs']):,.0f} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": shape, "layers": sizes, "threads": args.threads,
                                               "torch": torch.__version__, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
