"""Training configuration and presets.

A run's configuration is a flat dataclass of plain values, saved in every
checkpoint (so a checkpoint says how its model was built and trained). The
default preset is sized when the configuration is made, from the corpus
length and the budget (see `sized_default`); the checkpoint holds the sizes
chosen, so a resumed run never re-sizes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

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
    weight_dropout: float = 0.0      # DropConnect on every W_hh (FusedLSTM only)
    variational_dropout: float = 0.0  # every LSTM layer's input, one mask per sequence (FusedLSTM only)
    lstm_impl: str = "fused"         # "fused" (FusedLSTM) or "nn" (torch.nn.LSTM)
    backend: str = "auto"            # FusedLSTM backend
    # optimisation
    seq_len: int = 64
    batch_size: int = 32
    lr: float = 1e-2
    weight_decay: float = 0.0        # decoupled (AdamW), on the weight matrices only
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
            (0 <= self.weight_dropout < 1, f"weight_dropout must be in [0, 1), got {self.weight_dropout}"),
            (0 <= self.variational_dropout < 1,
             f"variational_dropout must be in [0, 1), got {self.variational_dropout}"),
            (self.lstm_impl != "nn" or not (self.weight_dropout or self.variational_dropout),
             "weight_dropout and variational_dropout need lstm_impl 'fused': torch.nn.LSTM has neither"),
            (self.lstm_impl in LSTM_IMPLS, f"lstm_impl must be one of {LSTM_IMPLS}, got {self.lstm_impl!r}"),
            (self.seq_len > 0, f"seq_len must be positive, got {self.seq_len}"),
            (self.batch_size > 0, f"batch_size must be positive, got {self.batch_size}"),
            (self.lr > 0, f"lr must be positive, got {self.lr}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
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


# Presets: overrides of TrainConfig's defaults. The default preset is sized to the
# corpus and the budget (`sized_default`), the others are fixed.
PRESETS: dict[str, dict] = {
    "default": {},
    # TrainConfig's defaults, the default preset before it was sized: chosen by two-minute
    # runs on tiny-shakespeare (1 CPU thread, shared machine, load average 5-8;
    # benchmarks/RESULTS.md): 2x128 reached 2.00 nats/char against 2.14 for 2x256 (seq 128,
    # lr 3e-3); seq 64 and lr 1e-2 (more, bigger steps) brought 2x128 to 1.66.
    "small": {},
    # The blog post's network: LSTM(1000) -> dropout 0.5 -> LSTM(800) -> dropout 0.5 -> softmax,
    # 100-character windows, batch 64, Adam (Keras' default lr 1e-3).
    "seed": dict(hidden_sizes=(1000, 800), dropout=0.5, seq_len=100, batch_size=64, lr=1e-3,
                 max_steps=5000, minutes=None, eval_interval=250),
}
SIZED_PRESETS = ("default",)

# What may differ from the saved configuration when a run is resumed: the budget,
# where and how fast it runs. Anything else would make a different run.
RESUMABLE_CHANGES = ("max_steps", "minutes", "eval_interval", "device", "backend", "precision")


BUDGET = ("max_steps", "minutes")

# --- sizing the default preset ----------------------------------------------------------------
# A run should neither memorise a small text (a 2x256 nn.LSTM without regularisers reached
# train 0.17 and held-out 3.2 nats/char on 150 KB in 10 minutes) nor leave a large one to a
# model too small to use it. Two estimates decide (the measured runs: benchmarks/RESULTS.md,
# "Quality at equal time: the sized default preset"):
#   characters the budget trains on, from a step-time model of this trainer on 2 CPU threads
#     (AMD EPYC, float32): seconds per step = STEP_S + parameters * PARAM_S at batch 32 x 64;
#   passes over the training text = those characters / training characters.
# Each layer gets the largest size of SIZE_LADDER for which the budget still trains on
# CHARS_PER_PARAM characters per parameter and the model has at most PARAMS_PER_CHAR
# parameters per training character (on tiny-shakespeare at 10 minutes, 2x256 at about 14
# characters per parameter and 2x192 at about 40 ended level with the same dropouts, 1.462;
# 12 keeps that budget clear of the boundary). Adam's peak learning rate falls with the width,
# LR_AT_128 * 128 / hidden size: at 2x256 on the 150 KB text, 5e-3 reached 1.443 nats/char
# with the same dropouts where 1e-2 reached 1.447. Beyond the base dropout of 0.1, the
# regularisers grow with the passes: none up to 10 (tiny-shakespeare at 10 minutes, about
# 13 passes, reached 1.448 with nearly none, 1.462 with 0.1 / 0.1 / 0), the most from 100
# (the 150 KB text, about 90 passes: 1.441 with 0.25 / 0.5 / 0.15).
SIZE_LADDER = (128, 192, 256, 384, 512)
STEP_S, PARAM_S = 0.010, 1.0e-7
CHARS_PER_PARAM = 12
PARAMS_PER_CHAR = 8
LR_AT_128 = 1e-2
SIZED_FIELDS = ("hidden_sizes", "lr", "dropout", "weight_dropout", "variational_dropout")


def lstm_parameters(embed_dim: int, hidden_sizes: tuple[int, ...]) -> int:
    """Weights and biases of the LSTM stack (what a step's time grows with)."""
    total, size_in = 0, embed_dim
    for size in hidden_sizes:
        total += 4 * size * (size_in + size + 2)
        size_in = size
    return total


def planned_chars(values: dict, hidden_sizes: tuple[int, ...]) -> float:
    """Training characters the budget in `values` gives a model of `hidden_sizes`."""
    per_step = values["batch_size"] * values["seq_len"]
    steps = [values["max_steps"]] if values["max_steps"] is not None else []
    if values["minutes"] is not None:
        step_s = (STEP_S + PARAM_S * lstm_parameters(values["embed_dim"], hidden_sizes)) * per_step / 2048
        steps.append(60 * values["minutes"] / step_s)
    return min(steps) * per_step


def sized_default(corpus_chars: int, values: dict, layers: int) -> dict:
    """hidden_sizes and the dropouts for a corpus of `corpus_chars` characters and the
    budget, batch and window in `values` (SIZED_FIELDS, before any override)."""
    train_chars = corpus_chars * (1 - values["val_fraction"])
    fits = [h for h in SIZE_LADDER
            if planned_chars(values, (h,) * layers) >= CHARS_PER_PARAM * lstm_parameters(values["embed_dim"], (h,) * layers)
            and lstm_parameters(values["embed_dim"], (h,) * layers) <= PARAMS_PER_CHAR * train_chars]
    hidden_sizes = (max(fits, default=SIZE_LADDER[0]),) * layers
    return dict(hidden_sizes=hidden_sizes, **training_rates(values, hidden_sizes, train_chars))


def training_rates(values: dict, hidden_sizes: tuple[int, ...], train_chars: float) -> dict:
    """The learning rate and the dropouts for a model of `hidden_sizes`: the rate from the
    widest layer; the dropouts from the passes over the text, the base dropout alone up to
    10, the most from 100 (strength log10(passes) - 1, clipped to [0, 1])."""
    passes = planned_chars(values, hidden_sizes) / max(1.0, train_chars)
    strength = min(1.0, max(0.0, math.log10(max(passes, 1.0)) - 1))
    return dict(lr=float(f"{LR_AT_128 * 128 / max(hidden_sizes):.2g}"), dropout=round(0.1 + 0.15 * strength, 2),
                weight_dropout=round(0.5 * strength, 2), variational_dropout=round(0.15 * strength, 2))


def corpus_chars(text: str | None) -> int:
    """Characters of the corpus a run would read (bytes for a file: a UTF-8 text's
    multi-byte characters make it a slight overestimate)."""
    from .corpus import builtin_text, read_text

    if text is None:
        return len(builtin_text())
    try:
        return Path(text).stat().st_size
    except OSError:
        return len(read_text(text))  # raises the corpus's own clear error


def make_config(preset: str = "default", **overrides) -> TrainConfig:
    """The preset's configuration with `overrides` (None values are ignored).

    A budget in `overrides` replaces the preset's whole budget: max_steps=N
    alone means N steps with no time limit, minutes=M alone M minutes. The
    default preset sizes the fields of SIZED_FIELDS that `overrides` leaves
    out (hidden sizes of 0, from `layer_sizes`, ask for sized layers) from the
    corpus's length and the budget; with lstm_impl "nn" its weight and
    variational dropouts are 0 (torch.nn.LSTM has neither)."""
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
    hidden = tuple(values["hidden_sizes"])
    sized_layers = "hidden_sizes" not in overrides or not any(hidden)
    if preset in SIZED_PRESETS and (sized_layers or any(k not in overrides for k in SIZED_FIELDS)):
        checked = TrainConfig(**{**values, "hidden_sizes": (1,)})  # bad values: their own errors first
        chars = corpus_chars(checked.text)
        if sized_layers:
            sized = sized_default(chars, values, len(hidden))
        else:
            sized = dict(hidden_sizes=hidden,
                         **training_rates(values, hidden, chars * (1 - values["val_fraction"])))
        if values["lstm_impl"] == "nn":
            sized.update(weight_dropout=0.0, variational_dropout=0.0)
        values.update({k: v for k, v in sized.items() if k == "hidden_sizes" or k not in overrides})
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
    """Hidden sizes from --hidden (one size, or one per layer) and --layers; None: the preset's.
    For a sized preset, --layers alone gives sizes of 0: sized layers (see make_config)."""
    if hidden is None and layers is None:
        return None
    if preset not in PRESETS:
        raise CharLMError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    base = PRESETS[preset].get("hidden_sizes", TrainConfig.hidden_sizes)
    if preset in SIZED_PRESETS:
        base = (0,) * len(base)  # 0: sized by make_config
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
