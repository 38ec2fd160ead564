"""`fusedlstm bench` and `fusedlstm bench-table`.

    fusedlstm bench [--device cpu|cuda] [--dtype float32,bfloat16] [--shapes NAME,...]
                    [--modes ...] [--backends NAME,...] [--out DIR] [--budget S | --repeats N]
                    [--tf32 off|on] [--isolate]

times nn.LSTM and each usable fusedlstm backend on the chosen cases, prints
the markdown table, and writes DIR/results.json (raw timings and metadata,
rewritten after every case, so an interrupted run keeps what it measured),
DIR/table.md and DIR/ratios.png. Exit status 1 when a provider raised, 130
when interrupted (SIGINT: the cases finished so far are still reported).

    fusedlstm bench-table DIR/results.json [...] [--short] [--plot FILE.png]

prints the table of saved results, several files as one table (and plots it).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import backends
from . import cases as bench_cases
from .timing import Budget

DEFAULT_OUT = "bench-results"


def _names(allowed, what):
    def parse(text: str) -> list[str]:
        try:
            return bench_cases.parse_names(text, list(allowed), what)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return parse


def _at_least(kind, minimum):
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"expected {kind.__name__} >= {minimum}, got {text!r}")
        return value
    return parse


def add_commands(commands) -> None:
    """Add `bench` and `bench-table` to the `fusedlstm` subcommands."""
    bench = commands.add_parser(
        "bench", help="time nn.LSTM and the fusedlstm backends: table, results.json, plot",
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("--device", choices=bench_cases.DEVICES, default="cpu")
    bench.add_argument("--dtype", type=_names(bench_cases.DTYPES, "dtype"), default=["float32"],
                       help="comma-separated: float32, bfloat16, float16 (default float32)")
    bench.add_argument("--shapes", type=_names(bench_cases.SHAPES, "shape"), default=None,
                       help=f"comma-separated (default: {','.join(bench_cases.default_shapes())}); "
                            "--list describes them")
    bench.add_argument("--modes", type=_names(bench_cases.MODES, "mode"), default=None,
                       help=f"comma-separated (default: {','.join(bench_cases.MODES)})")
    bench.add_argument("--backends", type=_names(backends.BACKENDS, "backend"), default=None,
                       help="comma-separated fusedlstm backends (default: every usable one on the "
                            f"device except {', '.join(bench_cases.OPT_IN_BACKENDS)}); nn.LSTM always runs")
    bench.add_argument("--out", type=Path, default=Path(DEFAULT_OUT),
                       help=f"folder for results.json, table.md, ratios.png (default {DEFAULT_OUT})")
    bench.add_argument("--budget", type=_at_least(float, 0), default=Budget.seconds,
                       help="seconds of timed calls to aim for per case and provider "
                            f"(default {Budget.seconds}; at least {Budget.min_repeats}, at most "
                            f"{Budget.max_repeats} calls)")
    bench.add_argument("--repeats", type=_at_least(int, 1), default=None,
                       help="exactly this many timed calls instead of --budget")
    bench.add_argument("--warmup", type=_at_least(int, 0), default=Budget.warmup, help="untimed calls first")
    bench.add_argument("--threads", type=_at_least(int, 1), default=None,
                       help="CPU threads for torch and the CPU kernels (default: torch's own choice)")
    bench.add_argument("--tf32", choices=("off", "on"), default="off",
                       help="CUDA float32: cuDNN (nn.LSTM) and cuBLAS (our GEMMs) both in full fp32 "
                            "(off, default) or both allowed TF32 (on). torch's own defaults mix the two: "
                            "TF32 for cuDNN, full fp32 for matmuls")
    bench.add_argument("--isolate", action="store_true",
                       help="time each provider in a fresh process, so that neither's allocations "
                            "(page faults) land on the other's timings (CPU; see fusedlstm/bench/isolated.py)")
    bench.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    bench.add_argument("--list", action="store_true", help="describe the shapes and exit")
    bench.set_defaults(run=run_bench)

    show = commands.add_parser("bench-table", help="print the table of saved results.json files")
    show.add_argument("results", nargs="+", type=Path,
                      help="results.json files (or their folders); the heading is the first one's")
    show.add_argument("--short", action="store_true", help="nn.LSTM's time and the ratios only")
    show.add_argument("--plot", type=Path, default=None, help="also draw the ratios into this PNG")
    show.set_defaults(run=run_table)


def list_shapes() -> int:
    for name, shape in bench_cases.SHAPES.items():
        if not shape.hidden:
            print(f"{name:<10} {shape.dims():<40} {shape.description}")
    return 0


def _command_line(args: argparse.Namespace) -> str:
    parts = ["fusedlstm bench", f"--device {args.device}", f"--dtype {','.join(args.dtype)}"]
    for option in ("shapes", "modes"):
        if getattr(args, option):
            parts.append(f"--{option} {','.join(getattr(args, option))}")
    if args.backends:
        parts.append(f"--backends {','.join(args.backends)}")
    parts.append(f"--repeats {args.repeats}" if args.repeats else f"--budget {args.budget}")
    parts.append(f"--warmup {args.warmup}")
    if args.threads:
        parts.append(f"--threads {args.threads}")
    if args.device == "cuda":
        parts.append(f"--tf32 {args.tf32}")
    if args.isolate:
        parts.append("--isolate")
    return " ".join(parts)


def run_bench(args: argparse.Namespace) -> int:
    if args.list:
        return list_shapes()
    import torch

    from . import environment, report, runner, timing

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("fusedlstm bench: --device cuda, but no CUDA GPU is visible here "
                 f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})")
    try:
        from matplotlib.figure import Figure  # noqa: F401  (needed for the plot: fail before timing)
        from tqdm import tqdm
    except ImportError as exc:
        sys.exit(f"fusedlstm bench needs matplotlib and tqdm ({exc}); pip install matplotlib tqdm")

    if args.threads:
        torch.set_num_threads(args.threads)  # also the extension's OpenMP: one shared runtime
    if args.device == "cuda":
        timing.set_tf32(args.tf32 == "on")
    budget = (Budget.fixed(args.repeats, args.warmup) if args.repeats
              else Budget(warmup=args.warmup, seconds=args.budget))
    selected = bench_cases.select(args.device, args.dtype, args.shapes, args.modes)
    providers = bench_cases.providers(args.device, args.backends)
    payload = {
        "metadata": environment.describe(args.device, _command_line(args)),
        "settings": {"dtypes": args.dtype, "shapes": sorted({c.shape.name for c in selected}),
                     "modes": args.modes or list(bench_cases.MODES), "providers": providers,
                     "warmup": budget.warmup, "budget_seconds": budget.seconds,
                     "min_repeats": budget.min_repeats, "max_repeats": budget.max_repeats,
                     "memory_method": timing.memory_method(args.device),
                     "isolated": args.isolate},
        "complete": False,
        "results": [],
    }
    out_dir: Path = args.out
    report.write_results(out_dir, payload)
    try:
        with tqdm(total=len(selected) * len(providers), file=sys.stderr, disable=args.no_progress,
                  unit="run", dynamic_ncols=True) as bar:
            for case in selected:
                bar.set_description(case.id)
                for record in runner.run_case(case, providers, budget, args.isolate, args.threads):
                    payload["results"].append(record)
                    bar.update()
                report.write_results(out_dir, payload)
        payload["complete"] = True
    except KeyboardInterrupt:  # Ctrl-C or a timeout's SIGINT: report what was measured
        print("fusedlstm bench: interrupted; reporting the cases finished so far", file=sys.stderr)
    report.write_results(out_dir, payload)
    report.plot(payload, out_dir / "ratios.png")
    print(report.document(payload))
    print(f"wrote {out_dir / 'results.json'}, {out_dir / 'table.md'}, {out_dir / 'ratios.png'}")
    errors = [r for r in payload["results"] if r["status"] == "error"]
    if errors:
        print(f"fusedlstm bench: {len(errors)} run(s) raised an error (see the Errors list above)",
              file=sys.stderr)
    if not payload["complete"]:
        return 130
    return 1 if errors else 0


def run_table(args: argparse.Namespace) -> int:
    from . import report

    payloads = []
    for path in args.results:
        file = path / "results.json" if path.is_dir() else path
        if not file.is_file():
            sys.exit(f"fusedlstm bench-table: no results file at {file}")
        payloads.append(report.load(file))
    payload = report.merge(payloads)
    print(report.document(payload, short=args.short))
    if args.plot:
        report.plot(payload, args.plot)
    return 0
