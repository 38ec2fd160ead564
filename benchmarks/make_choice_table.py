"""Write fusedlstm/choice_table.py, the evidence behind backend="auto" on CUDA,
from recorded GPU runs of `fusedlstm bench`.

    python benchmarks/make_choice_table.py [RESULTS.json ...]
        (default: every benchmarks/results/gpu/*.json)

After a GPU run is recorded (its results.json copied into results/gpu/), run
this and commit the rewritten table. Per GPU architecture, dtype and float32
precision only the newest run (its metadata date) counts: older runs of the
same kind were made with older code. Each case of that run becomes one
choice.Point: its forward+backward medians for sequence and packed shapes,
its forward (one inference step) for generation shapes, for every backend
that ran it without error (nn.LSTM's time is kept as the baseline). The
layer paths are those of this tree's code (Backend.layer_path; importing the
Triton backend needs triton), which must be the code that made the run: a
run recorded before a backend's size rules changed is replaced by the next.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from fusedlstm import backends
from fusedlstm.bench.cases import BASELINE, DTYPES, SHAPES
from fusedlstm.choice import Point

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "gpu"
TABLE = ROOT / "fusedlstm" / "choice_table.py"
MODE = {"sequence": "forward+backward", "packed": "forward+backward", "generate": "forward"}
OP = {"sequence": "layer", "packed": "layer", "generate": "cell"}
# Shape kinds that are no evidence here: "inference" times a whole model's
# forward without gradients, while the layer points rank forward+backward
# times, and a Query does not tell the two uses apart.
IGNORED_KINDS = ("inference",)


def run_kind(metadata: dict, dtype: str) -> tuple[str, str, str]:
    """(arch, dtype, precision) of a run's results in `dtype`."""
    arch = "sm_" + metadata["gpu_capability"].replace(".", "")
    tf32 = metadata.get("matmul_allow_tf32") or metadata.get("float32_matmul_precision") in ("high", "medium")
    return arch, dtype, ("tf32" if tf32 else "ieee") if dtype == "float32" else ""


def newest_runs(files: list[Path]) -> dict[tuple[str, str, str], tuple[str, dict, list[dict]]]:
    """(arch, dtype, precision) -> (file name, metadata, results) of the newest run."""
    runs: dict[tuple[str, str, str], tuple[str, dict, list[dict]]] = {}
    for file in files:
        payload = json.loads(file.read_text())
        metadata = payload["metadata"]
        if metadata.get("device") != "cuda" or not metadata.get("gpu_capability"):
            continue
        for dtype in payload["settings"]["dtypes"]:
            kind = run_kind(metadata, dtype)
            results = [r for r in payload["results"] if r["dtype"] == dtype]
            if kind not in runs or runs[kind][1]["date"] < metadata["date"]:
                runs[kind] = (file.name, metadata, results)
    return runs


def paths_and_floor(providers: list[str], sizes: list[int], dtype: torch.dtype):
    """Each provider's layer path at the case's hidden sizes (None if they
    differ between its modules) and the smallest H down to which every path
    stays the same."""
    def at(H):
        return tuple(backends.BACKENDS[p].layer_path(H, H, dtype) for p in providers)

    paths = at(max(sizes))
    if any(at(H) != paths for H in sizes):
        return None, 0
    floor = min(sizes)
    while floor > 1 and at(floor - 1) == paths:
        floor -= 1
    return tuple(zip(providers, paths)), floor


def points(runs) -> list[Point]:
    table = []
    for (arch, dtype, precision), (source, _, results) in sorted(runs.items()):
        for name, shape in SHAPES.items():
            if shape.kind in IGNORED_KINDS:
                continue
            mode = MODE[shape.kind]
            rows = {r["provider"]: r for r in results if r["shape"] == name and r["mode"] == mode}
            base = rows.get(BASELINE)
            times = sorted(((p, r["median_ms"]) for p, r in rows.items()
                            if p != BASELINE and p in backends.BACKENDS and r["status"] == "ok"),
                           key=lambda item: item[1])
            if base is None or base["status"] != "ok" or not times:
                continue
            sizes = [hidden for _, hidden, _ in shape.stack]
            if OP[shape.kind] == "layer":
                paths, floor = paths_and_floor([p for p, _ in times], sizes, DTYPES[dtype])
                if paths is None:
                    print(f"{source}: {name} skipped: its modules run different layer paths",
                          file=sys.stderr)
                    continue
            else:  # a cell step's code does not depend on H
                paths, floor = (), 1
            table.append(Point(arch, dtype, precision, OP[shape.kind], shape.kind == "packed", False,
                               floor, max(sizes), shape.batch,
                               tuple((p, round(ms, 4)) for p, ms in times), paths,
                               round(base["median_ms"], 4), name, source))
    return table


def render(table: list[Point], sources: list[str]) -> str:
    lines = ['"""The recorded GPU runs behind backend="auto" on CUDA (fusedlstm.choice).',
             "",
             "Written by benchmarks/make_choice_table.py from benchmarks/results/gpu/:",
             *(f"    {s}" for s in sources),
             'Regenerate it after recording a GPU run; do not edit it by hand.',
             '"""',
             "",
             "from .choice import Point",
             "",
             "MEASURED = ("]
    for p in table:
        lines.append(f"    Point({p.arch!r}, {p.dtype!r}, {p.precision!r}, {p.op!r}, packed={p.packed}, "
                     f"proj={p.proj}, hidden_min={p.hidden_min}, hidden={p.hidden}, batch={p.batch},")
        lines.append(f"          times={p.times!r},")
        lines.append(f"          paths={p.paths!r},")
        lines.append(f"          baseline_ms={p.baseline_ms!r}, case={p.case!r}, source={p.source!r}),")
    lines.append(")")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="*", type=Path, help="results JSON files of GPU runs")
    parser.add_argument("--out", type=Path, default=TABLE, help=f"where to write (default {TABLE})")
    args = parser.parse_args(argv)
    files = args.results or sorted(RESULTS.glob("*.json"))
    runs = newest_runs(files)
    table = points(runs)
    args.out.write_text(render(table, sorted({source for source, _, _ in runs.values()})))
    print(f"{args.out}: {len(table)} points from {len(runs)} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
