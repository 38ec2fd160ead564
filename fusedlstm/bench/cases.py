"""What is measured: shapes, modes, dtypes, devices and providers.

A case is (shape, mode, dtype, device); a provider is "nn.LSTM" (torch's own
LSTM: cuDNN on GPU, oneDNN on CPU) or the name of a fusedlstm backend. Every
(case, provider) is timed on the same inputs and weights, and each backend's
time is compared with nn.LSTM's measured in the same run.

Nothing here queries the GPU when imported.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .. import backends

BASELINE = "nn.LSTM"

# forward: the training forward (autograd records the graph); backward: only
# the backward of a forward done outside the timed region; forward+backward:
# both. "generate" and "inference" shapes time an inference forward instead
# (see Shape.kind).
MODES = ("forward", "backward", "forward+backward")

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
DEVICES = ("cpu", "cuda")

# Backends left out unless asked for by name: the pure-PyTorch oracle runs a
# Python loop per step and would dominate the run time.
OPT_IN_BACKENDS = ("reference",)


INFERENCE_KINDS = ("generate", "inference")


@dataclass(frozen=True)
class Shape:
    """One model and batch to time.

    kind:   "sequence"  the modules of `stack` run one after the other over a
                        dense [T, B, I] input;
            "packed"    the same over a PackedSequence of B sequences whose
                        lengths are uniform in min_length..steps (unsorted);
            "generate"  one step of a stack of LSTM cells (layers of `stack`),
                        batch B, the state carried from call to call;
            "inference" the modules of `stack` in eval() under no_grad over a
                        dense [T, B, I] input, each module's (h, c) carried
                        from call to call (evaluation, and with T=1 generation
                        through the LSTM module itself).
    stack:  (input_size, hidden_size, num_layers) of each module, in order.
    steps:  T, the sequence length (the longest, for "packed").
    hidden: left out of the default selection (the tests' tiny shapes).
    """

    name: str
    description: str
    kind: str
    stack: tuple[tuple[int, int, int], ...]
    steps: int
    batch: int
    min_length: int | None = None
    hidden: bool = False

    @property
    def modes(self) -> tuple[str, ...]:
        # Inference: there is no backward to time.
        return ("forward",) if self.kind in INFERENCE_KINDS else MODES

    @property
    def input_size(self) -> int:
        return self.stack[0][0]

    def dims(self) -> str:
        """The sizes in one line, e.g. "T=100 B=32 I=64 H=256 L=2"."""
        modules = " then ".join(f"H={h}" + (f" L={layers}" if layers > 1 else "")
                                for _, h, layers in self.stack)
        steps = (f"T={self.min_length}..{self.steps}" if self.kind == "packed"
                 else "1 step" if self.kind == "generate" else f"T={self.steps}")
        return f"{steps} B={self.batch} I={self.input_size} {modules}"


def _shape(name, description, kind, stack, steps, batch, min_length=None, hidden=False):
    return Shape(name, description, kind, tuple(stack), steps, batch, min_length, hidden)


SHAPES: dict[str, Shape] = {s.name: s for s in (
    _shape("fastrnns", "PyTorch fastrnns' default LSTM", "sequence", [(512, 512, 1)], 100, 64),
    _shape("char", "character model: 2 layers", "sequence", [(64, 256, 2)], 100, 32),
    _shape("blog", "two LSTMs in sequence, 1000 then 800 units, scalar input",
           "sequence", [(1, 1000, 1), (1000, 800, 1)], 100, 64),
    _shape("small-b1", "batch of one, long sequence", "sequence", [(64, 256, 1)], 1000, 1),
    _shape("small-b8", "batch of eight, long sequence", "sequence", [(64, 256, 1)], 1000, 8),
    _shape("small-h128", "batch of eight, long sequence, H=128: where the Triton backend keeps "
           "W_hh on chip (fp16/bf16)", "sequence", [(64, 128, 1)], 1000, 8),
    _shape("packed", "character model on a PackedSequence of 64 unsorted sequences",
           "packed", [(64, 256, 2)], 100, 64, min_length=10),
    _shape("generate", "per-step generation latency: 2-layer LSTMCell stack at the character "
           "model's sizes, state carried", "generate", [(64, 256, 2)], 1, 1),
    # pytorch/examples' word_language_model with H=128: its evaluation batches
    # (bptt 35, eval batch 10), and its generate.py, which calls the LSTM module
    # once per token at batch 1. Where per-call overhead shows.
    _shape("eval-t35", "evaluation in eval() and no_grad, 2 layers, state carried "
           "(word_language_model's evaluate)", "inference", [(128, 128, 2)], 35, 10),
    _shape("token-b1", "one token at batch 1 through the 2-layer LSTM module, state carried "
           "(word_language_model's generate.py)", "inference", [(128, 128, 2)], 1, 1),
    # Tiny shapes of each kind, for the harness's own tests.
    _shape("tiny", "test shape", "sequence", [(5, 7, 2)], 6, 3, hidden=True),
    _shape("tiny-packed", "test shape", "packed", [(5, 7, 1), (7, 4, 1)], 6, 4, min_length=2,
           hidden=True),
    _shape("tiny-generate", "test shape", "generate", [(5, 7, 2)], 1, 2, hidden=True),
    _shape("tiny-inference", "test shape", "inference", [(5, 7, 2)], 3, 2, hidden=True),
)}


def default_shapes() -> list[str]:
    return [name for name, shape in SHAPES.items() if not shape.hidden]


@dataclass(frozen=True)
class Case:
    shape: Shape
    mode: str
    dtype: torch.dtype
    device: str

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    @property
    def id(self) -> str:
        return f"{self.shape.name}-{self.mode}-{self.dtype_name}-{self.device}"


def parse_names(text: str | None, allowed, what: str) -> list[str] | None:
    """"a,b" -> ["a", "b"]; None stays None; an unknown name is a ValueError
    that lists the allowed ones."""
    if text is None:
        return None
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in allowed]
    if unknown or not names:
        raise ValueError(f"unknown {what} {', '.join(map(repr, unknown)) or '(none given)'}; "
                         f"choose from {', '.join(allowed)}")
    return names


def select(device: str, dtypes=("float32",), shapes=None, modes=None) -> list[Case]:
    """The cases for `device`: every valid (shape, mode) of the named shapes
    (default: every shape not hidden) and modes (default: all), per dtype."""
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}, got {device!r}")
    shapes = default_shapes() if shapes is None else shapes
    modes = MODES if modes is None else modes
    return [Case(SHAPES[name], mode, DTYPES[dtype], device)
            for dtype in dtypes for name in shapes for mode in SHAPES[name].modes if mode in modes]


def default_backends(device: str) -> list[str]:
    """The fusedlstm backends usable for `device` tensors, the opt-in ones
    left out. Backends registered later (cuda, triton) join by registration."""
    return [name for name in backends.available_backends(device) if name not in OPT_IN_BACKENDS]


def providers(device: str, backend_names=None) -> list[str]:
    """nn.LSTM first (the baseline), then the backends."""
    names = default_backends(device) if backend_names is None else list(backend_names)
    return [BASELINE, *(name for name in names if name != BASELINE)]


def skip_reason(case: Case, provider: str) -> str | None:
    """Why (case, provider) cannot run here, or None. Queries the GPU only
    when called, never at import."""
    if case.device == "cuda" and not torch.cuda.is_available():
        return "no CUDA GPU on this machine"
    if provider != BASELINE:
        backend = backends.BACKENDS.get(provider)
        if backend is None:
            return f"no fusedlstm backend named {provider!r} (registered: {', '.join(backends.BACKENDS)})"
        reason = backend.unavailable(case.device)
        if reason is not None:
            return f"backend {provider!r} unavailable: {reason}"
    return None
