"""The measured choice of backend="auto" for CUDA tensors.

A Query names the work to run:
    op         "layer" (FusedLSTM: one layer op per layer and direction) or
               "cell" (FusedLSTMCell: one step)
    arch       the GPU's compute capability, "sm_90" for (9, 0); None if unknown
    dtype      "float32", "bfloat16", "float16" or "float64"
    precision  for float32, what torch lets float32 matmuls use: "ieee" or
               "tf32" (precision.float32_matmul_precision; both backends
               follow it); "" for the other dtypes
    hidden     H; proj: proj_size (0 without a projection)
    batch      B (the number of sequences, for packed input)
    packed     the input is a PackedSequence

The evidence is choice_table.MEASURED, written by
benchmarks/make_choice_table.py from the recorded GPU runs
(benchmarks/results/gpu/*.json): one Point per recorded bench case, with
each backend's median time (forward+backward for sequences, one inference
step for generation), on the newest run of each GPU architecture, dtype and
precision.

The rule (choose): a point covers a query with the same (arch, dtype,
precision, op, packed, proj) whose hidden size lies in
[point.hidden_min, point.hidden] and whose batch is at most point.batch.
hidden_min is the smallest H at which every backend still runs the code it
ran at the measured size (backends.Backend.layer_path: the Triton layer
switches kernels at size limits), so a covering point measured the same
kernels at sizes no smaller. Smaller sizes keep the measured winner
because each backend's cost per step does not grow as they shrink: the
one-launch Triton kernels do less work per step (and one program serves up
to 16 rows), while the CUDA backend's per-step launches cost about the
same at these sizes (H200, bfloat16, H=256: 34.1 ms at B=1 and 38.7 ms at
B=8 for 1000 steps). Of the covering points the nearest (smallest hidden,
then smallest batch) decides: its fastest usable backend. For cells the
point picks the backend only (a cell step's code does not change with H);
which code the CUDA backend then runs for a step (its one-launch step
without gradients at small batch) is its own choice (backends.implementation).

No covering point (another GPU architecture, a projection, TF32, sizes
above every measured one): DEFAULT, "cuda" first. On every recorded H200
case the CUDA backend took 0.76x-1.62x cuDNN's forward+backward time, but
for one shape where the Triton backend was slow too (float32, H=128: 19x,
Triton 16x), while the Triton backend ranged from 0.21x to 16x; the
Triton kernels' on-chip sizes were fitted to sm_90's shared memory (ptxas,
fusedlstm/triton/persistent.py) and may not fit other GPUs; and a Triton
kernel compiles on its first call. So where nothing was measured, the
backend with the smallest worst case runs.

Everything here is a pure function of its arguments: no GPU is queried
(backends.resolve builds the Query from the tensors at call time).
"""

from __future__ import annotations

from dataclasses import dataclass

# Preference order where no recorded run covers the work (see the docstring).
DEFAULT = ("cuda", "triton", "reference")


@dataclass(frozen=True)
class Query:
    op: str
    arch: str | None
    dtype: str
    precision: str
    hidden: int
    proj: int
    batch: int
    packed: bool

    @property
    def key(self) -> tuple:
        return (self.arch, self.dtype, self.precision, self.op, self.packed, self.proj > 0)

    def describe(self) -> str:
        """The query in one line, e.g. "layer sm_90 bfloat16 H=256 B=32 dense"."""
        return (f"{self.op} {self.arch or 'unknown GPU'} {self.dtype}"
                + (f" ({self.precision})" if self.precision else "")
                + f" H={self.hidden}" + (f" P={self.proj}" if self.proj else "")
                + f" B={self.batch}" + ("" if self.op == "cell" else " packed" if self.packed else " dense"))


@dataclass(frozen=True)
class Point:
    """One recorded bench case: the work it timed and each backend's median."""

    arch: str
    dtype: str
    precision: str
    op: str
    packed: bool
    proj: bool
    hidden_min: int
    hidden: int
    batch: int
    times: tuple[tuple[str, float], ...]  # (backend, median ms), fastest first
    paths: tuple[tuple[str, str], ...]    # (backend, the code it ran: Backend.layer_path)
    baseline_ms: float                    # nn.LSTM (cuDNN) in the same run
    case: str                             # the bench shape's name
    source: str                           # the results file

    @property
    def key(self) -> tuple:
        return (self.arch, self.dtype, self.precision, self.op, self.packed, self.proj)

    def covers(self, query: Query) -> bool:
        return (self.key == query.key and self.hidden_min <= query.hidden <= self.hidden
                and query.batch <= self.batch)

    def evidence(self) -> str:
        times = ", ".join(f"{name} {ms:#.3g} ms" for name, ms in self.times)
        return (f"{self.case} ({self.dtype}, H={self.hidden}, B={self.batch}"
                f"{', packed' if self.packed else ''}) on {self.arch}: {times}; "
                f"nn.LSTM {self.baseline_ms:#.3g} ms ({self.source})")


@dataclass(frozen=True)
class Choice:
    backend: str
    point: Point | None  # the covering measurement, None for the default

    def reason(self, query: Query) -> str:
        if self.point is None:
            return (f"no recorded GPU run covers this work: the first usable of "
                    f"{', '.join(DEFAULT)} (the default: the smallest worst case measured)")
        return f"the fastest usable backend at {self.point.evidence()}"


def index(points) -> dict[tuple, tuple[Point, ...]]:
    """Points by key, nearest first (smallest hidden, then batch)."""
    table: dict[tuple, list[Point]] = {}
    for point in points:
        table.setdefault(point.key, []).append(point)
    return {key: tuple(sorted(group, key=lambda p: (p.hidden, p.batch))) for key, group in table.items()}


def choose(query: Query, usable: tuple[str, ...], table: dict[tuple, tuple[Point, ...]]) -> Choice:
    """The backend that runs `query`: of `usable` (names), the fastest at the
    nearest covering point of `table` (from index()), else the first of DEFAULT."""
    for point in table.get(query.key, ()):
        if point.covers(query):
            for name, _ in point.times:
                if name in usable:
                    return Choice(name, point)
            break
    return Choice(default(usable), None)


def default(usable: tuple[str, ...]) -> str:
    """The first of DEFAULT in `usable` ("reference" runs anywhere)."""
    return next((name for name in DEFAULT if name in usable), "reference")
