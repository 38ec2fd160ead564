"""The run's record: metrics.jsonl (one JSON line per evaluation) and loss.png."""

from __future__ import annotations

import json
import math
from pathlib import Path

FIELDS = ("step", "train_loss", "val_loss", "val_bpc", "chars_per_sec", "elapsed_s", "lr")


def bits(nats: float) -> float:
    """Nats per character -> bits per character."""
    return nats / math.log(2)


class MetricsLog:
    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.damaged_lines = 0  # of the last read()

    def read(self) -> list[dict]:
        """The records; lines that are not one (a kill mid-write leaves a partial last
        line) are left out and counted in self.damaged_lines."""
        self.damaged_lines = 0
        if not self.path.exists():
            return []
        records = []
        for line in self.path.read_text(errors="replace").splitlines():
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                record = None
            if isinstance(record, dict) and isinstance(record.get("step"), int):
                records.append(record)
            else:
                self.damaged_lines += 1
        return records

    def append(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({k: record.get(k) for k in FIELDS}) + "\n")

    def keep_until(self, step: int) -> None:
        """Drop lines after `step` (written after the checkpoint a run resumes from), and
        damaged ones."""
        kept = [r for r in self.read() if r["step"] <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        tmp.replace(self.path)


def plot(records: list[dict], path: str | Path, title: str = "") -> None:
    """Training and validation loss against step, in nats and bits per character."""
    import matplotlib

    matplotlib.use("Agg")  # files only: never needs a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        points = [(r["step"], r[key]) for r in records if r.get(key) is not None]
        if points:
            ax.plot(*zip(*points), marker="." if len(points) < 50 else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats / character)")
    right = ax.secondary_yaxis("right", functions=(bits, lambda b: b * math.log(2)))
    right.set_ylabel("bits / character")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    tmp = Path(path).with_name(Path(path).name + ".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    tmp.replace(path)
