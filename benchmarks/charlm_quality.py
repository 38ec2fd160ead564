"""Char-LM quality at equal time: the same training code with FusedLSTM and with
torch.nn.LSTM, each for the same wall-clock budget, on one corpus.

    python benchmarks/charlm_quality.py --text ../shared/corpora/tinyshakespeare.txt \
        --minutes 10 --impl fused nn --out runs/charlm_quality

Runs the implementations one after the other (never at the same time), each in
a process of its own with `fusedlstm train`'s own loop and a preset (default:
"default", sized to the corpus and the budget; with `nn` it has no weight or
variational dropout, which torch.nn.LSTM lacks, so the `nn` run is the same
trainer without the new regularisers), and writes <out>/results.json and
<out>/results.md (a Markdown table), besides each run's folder (<out>/<impl>/:
metrics.jsonl, loss.png, checkpoints). The conditions (torch version, threads,
CPU, load average) go with the figures, since a busy machine changes them.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

import torch

from fusedlstm.charlm.config import make_config
from fusedlstm.charlm.metrics import bits
from fusedlstm.charlm.train import train


def conditions(threads: int) -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        names = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass  # not Linux: platform's answer stands
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch": torch.__version__,
            "threads": threads, "cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def run_one(args, impl: str) -> dict:
    torch.set_num_threads(args.threads)
    config = make_config(args.preset, text=args.text, out=str(Path(args.out) / impl), minutes=args.minutes,
                         lstm_impl=impl, device=args.device, val_fraction=args.val_fraction, seed=args.seed)
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    result = train(config, progress=not args.quiet)
    wall = time.perf_counter() - start
    records = [json.loads(line) for line in (result.run_dir / "metrics.jsonl").read_text().splitlines()]
    # Training throughput over the whole run, weighting each interval by its steps.
    chars = [(r["step"] - p, r["chars_per_sec"]) for r, p in zip(records, [0] + [r["step"] for r in records])]
    chars_per_sec = sum(n for n, _ in chars) / sum(n / c for n, c in chars if c)
    return {
        "impl": impl, "best_val_loss": result.best_val_loss, "best_val_bpc": bits(result.best_val_loss),
        "best_step": result.best_step, "steps": result.step, "train_chars_per_sec": chars_per_sec,
        "wall_s": wall, "load_avg_before": load_before, "load_avg_after": os.getloadavg()[0],
        "run_dir": str(result.run_dir),
        "config": {k: v for k, v in config.to_dict().items() if k not in ("out",)},
    }


def table(results: list[dict], args, env: dict) -> str:
    cfg = results[0]["config"]
    lines = [
        f"Corpus `{Path(args.text).name}` (validation: last {cfg['val_fraction']:.0%}), preset `{args.preset}` "
        f"(embed {cfg['embed_dim']}, seq {cfg['seq_len']}, batch {cfg['batch_size']}, lr {cfg['lr']:g}, "
        f"weight decay {cfg['weight_decay']:g}), {args.minutes:g} min per implementation, "
        f"{args.device}, float32, {env['threads']} thread(s), torch {env['torch']}, {env['cpu']} "
        f"({env['cores']} cores), {env['date']}.",
        "",
        "| LSTM | hidden | dropout / weight / variational | best val loss (nats/char) | bpc | at step | steps "
        "| train chars/s | load avg (before/after) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    names = {"fused": "`FusedLSTM` (ours)", "nn": "`torch.nn.LSTM`"}
    for r in results:
        c = r["config"]
        lines.append(f"| {names[r['impl']]} | {'x'.join(map(str, c['hidden_sizes']))} | {c['dropout']:g} / "
                     f"{c['weight_dropout']:g} / {c['variational_dropout']:g} | "
                     f"{r['best_val_loss']:.4f} | {r['best_val_bpc']:.3f} | {r['best_step']} | "
                     f"{r['steps']} | {r['train_chars_per_sec']:,.0f} | {r['load_avg_before']:.1f} / "
                     f"{r['load_avg_after']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", required=True, help="corpus (UTF-8 text)")
    parser.add_argument("--minutes", type=float, default=10.0, help="budget per implementation (default 10)")
    parser.add_argument("--impl", nargs="+", choices=("fused", "nn"), default=["fused", "nn"])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="held-out end of the text (default 0.1, nanoGPT's split of tiny-shakespeare)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/charlm_quality", help="folder for runs and results (default runs/charlm_quality)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"{out} is not empty: choose another --out")
    env = conditions(torch.get_num_threads())
    # Each run in a fresh process: what one leaves behind (allocator state, page faults,
    # warm caches) must not speed up or slow down the next.
    results = []
    for impl in args.impl:
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
            results.append(pool.submit(run_one, args, impl).result())
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"conditions": env, "results": results}, indent=2) + "\n")
    markdown = table(results, args, env)
    (out / "results.md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
