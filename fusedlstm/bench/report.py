"""Reports of a run: the markdown table, results.json, and the plot of the ratios.

Table: one row per (shape, mode, dtype); per provider its median time (ms),
per backend the ratio of its time to nn.LSTM's in the same run, and per
provider the peak memory growth of one call (MiB).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from .cases import BASELINE, SHAPES
from .environment import machine_line

FLAG = "†"
_SHORT_MODES = {"forward": "fwd", "backward": "bwd", "forward+backward": "fwd+bwd"}


def _rows(records: list[dict]) -> tuple[list[tuple], list[str], dict]:
    """Row keys in order of appearance, providers likewise, and
    {(shape, mode, dtype): {provider: record}}."""
    rows, providers, by_row = [], [], {}
    for r in records:
        key = (r["shape"], r["mode"], r["dtype"])
        if key not in by_row:
            rows.append(key)
            by_row[key] = {}
        if r["provider"] not in providers:
            providers.append(r["provider"])
        by_row[key][r["provider"]] = r
    if BASELINE in providers:  # the baseline's column first
        providers.remove(BASELINE)
        providers.insert(0, BASELINE)
    return rows, providers, by_row


def format_ms(value: float) -> str:
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def ratio(record: dict | None, baseline: dict | None) -> float | None:
    """Backend time / nn.LSTM time of the same run, or None if either is missing."""
    if not record or not baseline or record.get("status") != "ok" or baseline.get("status") != "ok":
        return None
    return record["median_ms"] / baseline["median_ms"]


def flagged(record: dict | None) -> bool:
    return bool(record and record.get("rel_diff") is not None
                and not record["rel_diff"] <= record["rel_diff_bound"])


def _time_cell(record: dict | None) -> str:
    if record is None:
        return "-"
    if record["status"] != "ok":
        return "skip" if record["status"] == "skipped" else "error"
    return format_ms(record["median_ms"])


def _ratio_cell(record: dict | None, baseline: dict | None) -> str:
    value = ratio(record, baseline)
    if value is None:
        return _time_cell(record) if record and record["status"] != "ok" else "-"
    return format_ratio(value) + (FLAG if flagged(record) else "")


def format_ratio(value: float) -> str:
    return f"{value:.2f}" if value >= 0.1 else f"{value:.2g}"


def _memory_cell(record: dict | None) -> str:
    if record is None or record.get("status") != "ok" or record.get("peak_memory_bytes") is None:
        return "-"
    return f"{record['peak_memory_bytes'] / 2**20:.1f}"


def _markdown(header: list[str], lines: list[list[str]]) -> str:
    align = ["---"] * 3 + ["---:"] * (len(header) - 3)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def table(records: list[dict], short: bool = False) -> str:
    """The markdown table of `records` (short: nn.LSTM's time and the ratios only)."""
    rows, providers, by_row = _rows(records)
    backends = [p for p in providers if p != BASELINE]
    header = ["shape", "mode", "dtype"]
    header += [f"{BASELINE} ms"] if short else [f"{p} ms" for p in providers]
    header += [f"{b} / {BASELINE}" for b in backends]
    if not short:
        header += [f"{p} MiB" for p in providers]
    lines = []
    for key in rows:
        cells = by_row[key]
        baseline = cells.get(BASELINE)
        line = list(key)
        line += [_time_cell(baseline)] if short else [_time_cell(cells.get(p)) for p in providers]
        line += [_ratio_cell(cells.get(b), baseline) for b in backends]
        if not short:
            line += [_memory_cell(cells.get(p)) for p in providers]
        lines.append(line)
    return _markdown(header, lines)


def notes(records: list[dict]) -> str:
    """What the table's cells leave out: shapes, flags, skips and errors."""
    out = ["Shapes (I input, H hidden, L layers):", ""]
    for name in dict.fromkeys(r["shape"] for r in records):
        shape = SHAPES.get(name)
        if shape is not None:
            out.append(f"- `{name}`: {shape.dims()} -- {shape.description}")
    flags = [r for r in records if flagged(r)]
    if flags:
        out += ["", f"{FLAG} forward output differs from {BASELINE}'s by more than the check's bound:"]
        out += [f"- {r['provider']} on {r['case']}: {r['rel_diff']:.2e} > {r['rel_diff_bound']:.0e}"
                for r in flags]
    skipped: dict[tuple, int] = {}
    for r in records:
        if r["status"] == "skipped":
            skipped[(r["provider"], r["reason"])] = skipped.get((r["provider"], r["reason"]), 0) + 1
    if skipped:
        out += ["", "Skipped:"]
        out += [f"- {provider} ({count} case{'s' * (count > 1)}): {reason}"
                for (provider, reason), count in skipped.items()]
    errors = [r for r in records if r["status"] == "error"]
    if errors:
        out += ["", "Errors:"]
        out += [f"- {r['provider']} on {r['case']}: {r['reason']}" for r in errors]
    return "\n".join(out)


def heading(metadata: dict, settings: dict) -> str:
    commands = metadata.get("command") or "unknown"
    return (f"fusedlstm bench on {metadata['device']} ({', '.join(settings['dtypes'])}): "
            f"{machine_line(metadata)}; commit {metadata.get('commit') or 'unknown'}; "
            f"{metadata['date']}.\n\n"
            f"Command: `{commands}`.\n\n"
            f"Median ms per timed call (untimed warm-up calls first; each call's time is in "
            f"results.json); `X / {BASELINE}` = X's time over {BASELINE}'s in the same run "
            f"(below 1: faster); MiB = peak memory growth during one call "
            f"({settings['memory_method']})"
            + ("; each provider timed in its own process (--isolate)." if settings.get("isolated") else "."))


def document(payload: dict, short: bool = False) -> str:
    """Heading, table and notes of one results.json payload."""
    records = payload["results"]
    parts = [heading(payload["metadata"], payload["settings"]), table(records, short), notes(records)]
    if not payload.get("complete", True):
        parts.insert(1, "**Incomplete run**: the table holds the cases finished so far.")
    return "\n\n".join(parts) + "\n"


def merge(payloads: list[dict]) -> dict:
    """Several runs' payloads as one (the heading's machine and date are the
    first's; the commands are all listed; every run's metadata is kept under
    "merged_metadata")."""
    if len(payloads) == 1:
        return payloads[0]
    first = payloads[0]
    return {
        **first,
        "metadata": {**first["metadata"],
                     "command": "`; `".join(str(p["metadata"].get("command")) for p in payloads)},
        "settings": {**first["settings"],
                     "dtypes": list(dict.fromkeys(d for p in payloads for d in p["settings"]["dtypes"]))},
        "merged_metadata": [m for p in payloads for m in p.get("merged_metadata", [p["metadata"]])],
        "complete": all(p.get("complete", True) for p in payloads),
        "results": [r for p in payloads for r in p["results"]],
    }


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_results(out_dir: Path, payload: dict) -> None:
    """results.json (everything, raw timings included) and table.md."""
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_atomic(out_dir / "results.json", json.dumps(payload, indent=1) + "\n")
    _write_atomic(out_dir / "table.md", document(payload))


def load(path) -> dict:
    return json.loads(Path(path).read_text())


def plot(payload: dict, path: Path) -> None:
    """Grouped bars: per row of the table, each backend's time over nn.LSTM's
    (log scale; 1 = nn.LSTM's time in the same run)."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state
    from matplotlib.ticker import NullLocator

    records = payload["results"]
    rows, providers, by_row = _rows(records)
    backends = [p for p in providers if p != BASELINE]
    multi_dtype = len({key[2] for key in rows}) > 1
    labels = [f"{s}\n{_SHORT_MODES.get(m, m)}" + (f"\n{d}" if multi_dtype else "") for s, m, d in rows]
    values = {b: [ratio(by_row[key].get(b), by_row[key].get(BASELINE)) for key in rows] for b in backends}

    fig = Figure(figsize=(max(8.0, 0.6 * len(rows) * max(1, len(backends)) + 2), 5.5),
                 layout="constrained")
    ax = fig.subplots()
    width = 0.8 / max(1, len(backends))
    plotted = False
    for k, backend in enumerate(backends):
        xs = [i + (k - (len(backends) - 1) / 2) * width for i, v in enumerate(values[backend]) if v]
        ys = [v for v in values[backend] if v]
        if ys:
            bars = ax.bar(xs, ys, width, label=backend)
            ax.bar_label(bars, labels=[format_ratio(v) for v in ys], fontsize=7, rotation=90, padding=2)
            plotted = True
    ax.axhline(1.0, color="black", linewidth=1, label=f"{BASELINE} (same run)")
    if plotted:
        # Log scale, ticks at powers of two written plainly (0.25, 0.5, 1, 2, ...).
        shown = [v for b in backends for v in values[b] if v] + [1.0]
        low, high = math.floor(math.log2(min(shown))), math.ceil(math.log2(max(shown)))
        ax.set_yscale("log")
        ax.set_ylim(2.0 ** low / 1.2, 2.0 ** high * 1.6)
        ax.set_yticks([2.0 ** k for k in range(low, high + 1)],
                      [f"{2.0 ** k:g}" for k in range(low, high + 1)])
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.text(0.5, 0.5, "no backend ratio to plot", ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks(range(len(rows)), labels, fontsize=8)
    ax.set_ylabel(f"time / {BASELINE} time  (below 1: faster)")
    meta = payload["metadata"]
    ax.set_title(f"fusedlstm vs {BASELINE} on {meta['device']} "
                 f"({', '.join(payload['settings']['dtypes'])})\n{machine_line(meta)}", fontsize=9)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=110)
