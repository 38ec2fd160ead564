"""Char-LM training throughput: FusedLSTM against torch.nn.LSTM in the same trainer,
each run in a process of its own, in the order given (default: fused nn nn fused,
so each implementation runs both first and last).

    python benchmarks/charlm_throughput.py --text ../shared/corpora/tinyshakespeare.txt \
        --threads 2 --steps 400 --order fused nn nn fused

Each process runs `fusedlstm.charlm.train` (the trainer's own loop, evaluations
excluded from the timing as in metrics.jsonl) for --warmup steps, evaluates,
then --steps more; the figure is the training characters per second of the steps
after the warm-up (the first steps of a process run slower). The model is a
preset's (default `small`: 2x128, the configuration of the published
comparisons) without weight or variational dropout unless asked for, so both
implementations train the same model. Prints a Markdown table with the
conditions (CPU, threads, load average before and after each run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = """
import json, sys, torch
from fusedlstm.charlm.config import make_config
from fusedlstm.charlm.train import train
args = json.loads(sys.argv[1])
torch.set_num_threads(args["threads"])
config = make_config(args["preset"], text=args["text"], out=args["out"], lstm_impl=args["impl"],
                     max_steps=args["warmup"] + args["steps"], eval_interval=args["warmup"],
                     device="cpu", precision="fp32", weight_dropout=args["weight_dropout"],
                     variational_dropout=args["variational_dropout"])
train(config, progress=False)
"""


def run_one(impl: str, args, out: Path) -> dict:
    settings = dict(impl=impl, threads=args.threads, preset=args.preset, text=args.text, out=str(out),
                    warmup=args.warmup, steps=args.steps,
                    weight_dropout=args.weight_dropout if impl == "fused" else 0.0,
                    variational_dropout=args.variational_dropout if impl == "fused" else 0.0)
    load_before = os.getloadavg()[0]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], check=True, env=env)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    # Intervals after the warm-up, weighted by their steps.
    timed = [(r["step"] - prev["step"], r["chars_per_sec"]) for prev, r in zip(records, records[1:])]
    chars_per_sec = sum(n for n, _ in timed) / sum(n / c for n, c in timed)
    return {"impl": impl, "chars_per_sec": chars_per_sec, "load_before": load_before,
            "load_after": os.getloadavg()[0]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="corpus (default: the built-in one)")
    parser.add_argument("--order", nargs="+", choices=("fused", "nn"), default=["fused", "nn", "nn", "fused"])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=100, help="steps before the timed ones (default 100)")
    parser.add_argument("--steps", type=int, default=400, help="timed steps per run (default 400)")
    parser.add_argument("--weight-dropout", type=float, default=0.0, help="FusedLSTM's (default 0)")
    parser.add_argument("--variational-dropout", type=float, default=0.0, help="FusedLSTM's (default 0)")
    args = parser.parse_args(argv)
    if args.steps < args.warmup:
        parser.error("--steps must be at least --warmup (one evaluation after the warm-up)")
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    with tempfile.TemporaryDirectory() as folder:
        results = [run_one(impl, args, Path(folder) / f"{k}-{impl}") for k, impl in enumerate(args.order)]
    print(f"{cpu}, {args.threads} thread(s), preset {args.preset}, {args.steps} timed steps after "
          f"{args.warmup}, weight/variational dropout {args.weight_dropout}/{args.variational_dropout} (fused)\n")
    print("| run | LSTM | train chars/s | load avg (before/after) |\n|---|---|---|---|")
    for k, r in enumerate(results):
        print(f"| {k + 1} | {r['impl']} | {r['chars_per_sec']:,.0f} | {r['load_before']:.2f} / {r['load_after']:.2f} |")
    medians = {impl: statistics.median(r["chars_per_sec"] for r in results if r["impl"] == impl)
               for impl in dict.fromkeys(args.order)}
    if len(medians) == 2:
        print(f"\nFusedLSTM / nn.LSTM (medians): {medians['fused'] / medians['nn']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
