"""Training configuration and presets.

A run's configuration is a flat dataclass of plain values, saved in every
checkpoint (so a checkpoint says how its model was built and trained).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .errors import CharLMError
from .model import LSTM_IMPLS

PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class TrainConfig:
    # data
    text: str | None = None          # corpus path; None: the built-in corpus
    val_fraction: float = 0.05       # the last 5 % of the text is held out
    # model
    embed_dim: int = 64
    hidden_sizes: tuple[int, ...] = (128, 128)
    dropout: float = 0.1
    lstm_impl: str = "fused"         # "fused" (FusedLSTM) or "nn" (torch.nn.LSTM)
    backend: str = "auto"            # FusedLSTM backend
    # optimisation
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 1e-2
    warmup_steps: int = 50
    min_lr_ratio: float = 0.1        # the cosine schedule ends at lr * min_lr_ratio
    grad_clip: float = 1.0           # max global gradient norm
    # budget: stop at whichever comes first (None: no limit of that kind)
    max_steps: int | None = None
    minutes: float | None = 2.0
    eval_interval: int = 200         # steps between evaluations (and checkpoints)
    eval_streams: int = 32
    # run
    seed: int = 0
    device: str = "auto"             # "auto": cuda when available, else cpu
    precision: str = "auto"          # "auto": bf16 on CUDA, fp32 on CPU
    out: str | None = None           # run folder; None: runs/charlm-<time>

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden_sizes", tuple(self.hidden_sizes))
        checks = [
            (all(isinstance(h, int) and h > 0 for h in self.hidden_sizes) and self.hidden_sizes,
             f"hidden sizes must be positive integers, got {self.hidden_sizes}"),
            (self.embed_dim > 0, f"embed_dim must be positive, got {self.embed_dim}"),
            (0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}"),
            (self.lstm_impl in LSTM_IMPLS, f"lstm_impl must be one of {LSTM_IMPLS}, got {self.lstm_impl!r}"),
            (self.seq_len > 0, f"seq_len must be positive, got {self.seq_len}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.warmup_steps >= 0, f"warmup_steps must be >= 0, got {self.warmup_steps}"),
            (0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}"),
            (self.grad_clip > 0, f"grad_clip must be positive, got {self.grad_clip}"),
            (self.max_steps is None or self.max_steps > 0, f"max_steps must be positive, got {self.max_steps}"),
            (self.minutes is None or self.minutes > 0, f"minutes must be positive, got {self.minutes}"),
            (self.max_steps is not None or self.minutes is not None,
             "give a budget: max_steps, minutes, or both"),
            (self.eval_interval > 0, f"eval_interval must be positive, got {self.eval_interval}"),
            (self.eval_streams > 0, f"eval_streams must be positive, got {self.eval_streams}"),
            (self.device in ("auto", "cpu", "cuda"), f"device must be auto, cpu or cuda, got {self.device!r}"),
            (self.precision in PRECISIONS, f"precision must be one of {PRECISIONS}, got {self.precision!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CharLMError(message)

    def to_dict(self) -> dict:
        values = dataclasses.asdict(self)
        values["hidden_sizes"] = list(self.hidden_sizes)
        return values

    @classmethod
    def from_dict(cls, values: dict) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in known})


# Presets: overrides of TrainConfig's defaults.
PRESETS: dict[str, dict] = {
    # TrainConfig's defaults. Chosen by two-minute runs on tiny-shakespeare (1 CPU thread,
    # shared machine, load average 5-8; benchmarks/RESULTS.md): 2x128 reached 2.00 nats/char
    # against 2.14 for 2x256 (seq 128, lr 3e-3); seq 64 and lr 1e-2 (more, bigger steps)
    # brought 2x128 to 1.66.
    "default": {},
    # The blog post's network: LSTM(1000) -> dropout 0.5 -> LSTM(800) -> dropout 0.5 -> softmax,
    # 100-character windows, batch 64, Adam (Keras' default lr 1e-3).
    "seed": dict(hidden_sizes=(1000, 800), dropout=0.5, seq_len=100, batch_size=64, lr=1e-3,
                 max_steps=5000, minutes=None, eval_interval=250),
}

# What may differ from the saved configuration when a run is resumed: the budget,
# where and how fast it runs. Anything else would make a different run.
RESUMABLE_CHANGES = ("max_steps", "minutes", "eval_interval", "device", "backend", "precision")


BUDGET = ("max_steps", "minutes")


def make_config(preset: str = "default", **overrides) -> TrainConfig:
    """The preset's configuration with `overrides` (None values are ignored).

    A budget in `overrides` replaces the preset's whole budget: max_steps=N
    alone means N steps with no time limit, minutes=M alone M minutes."""
    if preset not in PRESETS:
        raise CharLMError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    values = {**dataclasses.asdict(TrainConfig()), **PRESETS[preset]}
    if any(k in overrides for k in BUDGET):
        values.update(dict.fromkeys(BUDGET))
    values.update(overrides)
    unknown = set(values) - {f.name for f in dataclasses.fields(TrainConfig)}
    if unknown:
        raise TypeError(f"unknown configuration field(s): {sorted(unknown)}")
    return TrainConfig(**values)


def resumed_config(saved: TrainConfig, **overrides) -> TrainConfig:
    """`saved` with the changes allowed on --resume; CharLMError naming any other."""
    overrides = {k: v for k, v in overrides.items() if v is not None}
    conflicts = [f"{k} (run: {getattr(saved, k)!r}, given: {v!r})" for k, v in overrides.items()
                 if k not in RESUMABLE_CHANGES and _normal(v) != _normal(getattr(saved, k))]
    if conflicts:
        raise CharLMError("--resume continues the saved run, whose settings cannot change: "
                          + "; ".join(conflicts) + f". Only these may: {', '.join(RESUMABLE_CHANGES)}")
    allowed = {k: v for k, v in overrides.items() if k in RESUMABLE_CHANGES}
    if any(k in allowed for k in BUDGET):
        allowed = {**dict.fromkeys(BUDGET), **allowed}
    return dataclasses.replace(saved, **allowed)


def _normal(value):
    return tuple(value) if isinstance(value, list) else value



def layer_sizes(preset: str, hidden: list[int] | None, layers: int | None) -> tuple[int, ...] | None:
    """Hidden sizes from --hidden (one size, or one per layer) and --layers; None: the preset's."""
    if hidden is None and layers is None:
        return None
    if preset not in PRESETS:
        raise CharLMError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset].get("hidden_sizes", TrainConfig.hidden_sizes)
    if hidden is None:
        if len(set(base)) != 1:
            raise CharLMError(f"the {preset} preset's layers differ in size {tuple(base)}: give --hidden "
                              f"too (one size, or one per layer: --hidden 1000,800,800)")
        hidden = [base[0]]
    if len(hidden) == 1:
        return tuple(hidden * (layers or len(base)))
    if layers is not None and layers != len(hidden):
        raise CharLMError(f"--hidden names {len(hidden)} layer sizes but --layers is {layers}")
    return tuple(hidden)
