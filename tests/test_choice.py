"""backend="auto" on CUDA tensors: the measured choice (fusedlstm.choice), its
table (fusedlstm/choice_table.py, generated from the recorded GPU runs) and
how modules, `fusedlstm info` and the float32 precision setting use it. The
rule is a pure function of its inputs, so all of it runs without a GPU; the
last test checks a module's choice on a GPU."""

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fusedlstm import FusedLSTM, FusedLSTMCell, backends, choice, choice_table, cli
from lstm_testing import skip_unless_gpu

ROOT = Path(__file__).resolve().parents[1]
ALL = ("cuda", "triton", "reference")


def point(hidden_min, hidden, batch, times, arch="sm_90", dtype="bfloat16", precision="", op="layer",
          packed=False, proj=False, case="case"):
    return choice.Point(arch, dtype, precision, op, packed, proj, hidden_min, hidden, batch,
                        tuple(sorted(times.items(), key=lambda item: item[1])), (), 1.0, case, "run.json")


def query(hidden, batch, arch="sm_90", dtype="bfloat16", precision="", op="layer", packed=False, proj=0):
    return choice.Query(op, arch, dtype, precision, hidden, proj, batch, packed)


# --- the rule on a hand-made table -----------------------------------------------------------

TABLE = choice.index([
    point(1, 128, 8, {"triton": 1.0, "cuda": 5.0}, case="small"),
    point(129, 256, 1, {"triton": 3.0, "cuda": 3.3}, case="b1"),
    point(129, 256, 32, {"cuda": 7.0, "triton": 9.0}, case="b32"),
])


@pytest.mark.parametrize("hidden,batch,expected", [
    (128, 8, "small"), (13, 3, "small"),       # at and below a measured size, same kernels
    (128, 9, None),                            # batch above the only point of that size class
    (200, 1, "b1"), (256, 1, "b1"),            # nearest covering point: the smallest batch
    (256, 2, "b32"), (129, 32, "b32"),
    (257, 1, None), (256, 33, None),           # above every measured size or batch
])
def test_a_point_covers_its_size_class_at_no_larger_sizes(hidden, batch, expected):
    picked = choice.choose(query(hidden, batch), ALL, TABLE)
    assert (picked.point.case if picked.point else None) == expected
    if expected is None:
        assert picked.backend == "cuda"
        assert "no recorded GPU run covers" in picked.reason(query(hidden, batch))
    else:
        assert picked.backend == picked.point.times[0][0]


@pytest.mark.parametrize("other", [dict(arch="sm_80"), dict(dtype="float16"), dict(op="cell"),
                                   dict(packed=True), dict(proj=64)], ids=str)
def test_another_gpu_dtype_op_layout_or_projection_is_not_covered(other):
    picked = choice.choose(query(128, 8, **other), ALL, TABLE)
    assert picked == choice.Choice("cuda", None)


def test_float32_points_hold_for_their_precision_only():
    table = choice.index([point(1, 128, 8, {"triton": 1.0, "cuda": 2.0}, dtype="float32", precision="ieee")])
    assert choice.choose(query(64, 8, dtype="float32", precision="ieee"), ALL, table).backend == "triton"
    assert choice.choose(query(64, 8, dtype="float32", precision="tf32"), ALL, table).point is None


def test_only_usable_backends_are_chosen():
    # The measured winner unusable: the next fastest at the same point.
    picked = choice.choose(query(128, 8), ("cuda", "reference"), TABLE)
    assert picked.backend == "cuda" and picked.point.case == "small"
    # The default order skips what is missing; "reference" runs anywhere.
    assert choice.choose(query(512, 8), ("triton", "reference"), TABLE).backend == "triton"
    assert choice.choose(query(512, 8), (), TABLE).backend == "reference"


# --- the recorded runs' table ----------------------------------------------------------------

def load_generator():
    spec = importlib.util.spec_from_file_location("make_choice_table", ROOT / "benchmarks" / "make_choice_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_table_is_what_the_script_makes_of_the_recorded_runs(tmp_path):
    """choice_table.py is regenerated, not edited: the script run on the
    recorded results writes the same file (needs triton for its layer paths)."""
    pytest.importorskip("triton")
    out = tmp_path / "table.py"
    assert load_generator().main(["--out", str(out)]) == 0
    assert out.read_text() == (ROOT / "fusedlstm" / "choice_table.py").read_text()


def test_every_recorded_case_gets_its_fastest_backend():
    """At each recorded case "auto" runs the backend measured fastest there, so
    it never costs more than the best of them."""
    assert choice_table.MEASURED, "no recorded GPU run in the table"
    for p in choice_table.MEASURED:
        q = choice.Query(p.op, p.arch, p.dtype, p.precision, p.hidden, 0, p.batch, p.packed)
        picked = backends.auto_choice(q, ALL)
        assert picked.point == p, q
        assert picked.backend == min(p.times, key=lambda item: item[1])[0]


@pytest.mark.parametrize("work,expected", [
    (query(128, 8), "triton"),                       # persistent kernel: 6.4 ms against 32.4 ms
    (query(64, 4), "triton"),                        # same kernel, smaller
    (query(256, 32), "triton"),                      # char: streamed kernel
    (query(256, 16), "triton"),
    (query(256, 64, packed=True), "cuda"),           # packed
    (query(512, 64), "cuda"),                        # fastrnns: per-step on both
    (query(256, 32, dtype="float32", precision="ieee"), "cuda"),
    (query(256, 64), "cuda"),                        # dense batch 64 at H=256: never measured
    (query(128, 8, arch="sm_80"), "cuda"),           # another GPU
    (query(128, 8, proj=64), "cuda"),                # a projection
    (query(128, 8, dtype="float32", precision="tf32"), "cuda"),
    (query(256, 1, op="cell"), "cuda"),              # generation step
], ids=lambda v: v.describe() if isinstance(v, choice.Query) else v)
def test_choices_on_the_h200(work, expected):
    assert backends.auto_choice(work, ALL).backend == expected


def test_table_paths_are_the_backends_paths_now():
    """The size classes were cut with the layer paths of this tree's backends."""
    pytest.importorskip("triton")
    for p in choice_table.MEASURED:
        dtype = backends.DTYPE_OF[p.dtype]
        for name, path in p.paths:
            layer_path = backends.BACKENDS[name].layer_path
            assert layer_path(p.hidden, p.hidden, dtype) == path
            assert layer_path(p.hidden_min, p.hidden_min, dtype) == path
            if p.hidden_min > 1:
                assert any(backends.BACKENDS[n].layer_path(p.hidden_min - 1, p.hidden_min - 1, dtype) != q
                           for n, q in p.paths)


# --- how modules and the CLI use it ----------------------------------------------------------

def pretend_gpu(monkeypatch, arch="sm_90", usable=ALL):
    """CUDA tensors' queries answered as on a GPU of `arch` with `usable` backends."""
    monkeypatch.setattr(backends, "gpu_arch", lambda index: arch)
    monkeypatch.setattr(backends, "_usable", lambda device_type: usable)
    monkeypatch.setattr(backends, "_choices", {})  # answers for another GPU


def test_eager_choices_are_looked_up_once_per_work(monkeypatch):
    pretend_gpu(monkeypatch)
    calls = []
    monkeypatch.setattr(backends, "auto_choice", lambda q: calls.append(q) or choice.Choice("triton", None))
    for _ in range(3):
        assert backends.resolve("auto", torch.device("cuda"), "layer", torch.bfloat16, 128, 0, 8).name == "triton"
    backends.resolve("auto", torch.device("cuda"), "layer", torch.bfloat16, 128, 0, 9)
    assert [q.batch for q in calls] == [8, 9]


@pytest.mark.parametrize("arch,hidden,batch,packed,expected", [
    ("sm_90", 128, 8, False, "triton"), ("sm_90", 128, 8, True, "cuda"), ("sm_86", 128, 8, False, "cuda"),
])
def test_resolve_passes_the_work_to_the_choice(monkeypatch, arch, hidden, batch, packed, expected):
    pretend_gpu(monkeypatch, arch)
    got = backends.resolve("auto", torch.device("cuda"), "layer", torch.bfloat16, hidden, 0, batch, packed)
    assert got.name == expected


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=["bf16", "f32"])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_choice_traces_into_compiled_graphs(monkeypatch, dynamic, dtype):
    """torch.compile(fullgraph=True) of a forward on CUDA tensors runs the choice
    at trace time (the GPU's architecture, the usable backends and the precision
    setting as constants), guarded on the batch like the eager choice."""
    monkeypatch.setattr(backends, "gpu_arch", torch.compiler.assume_constant_result(lambda index: "sm_90"))
    monkeypatch.setattr(backends, "_usable", torch.compiler.assume_constant_result(lambda device_type: ALL))
    monkeypatch.setattr(backends, "_choices", {})
    cuda = torch.device("cuda")

    def forward(x):
        picked = backends.resolve("auto", cuda, "layer", x.dtype, 128, 0, x.size(0), False)  # f32: ieee
        return x * 3 if picked.name == "triton" else x + 1

    torch._dynamo.reset()
    compiled = torch.compile(forward, fullgraph=True, backend="eager", dynamic=dynamic)
    for batch, expected in ((4, 3.0), (8, 3.0), (9, 2.0), (16, 2.0)):  # triton up to batch 8
        assert compiled(torch.ones(batch, 2, dtype=dtype))[0, 0].item() == expected


def test_auto_summary_says_what_runs_at_each_batch():
    q = query(256, 1)
    assert backends.auto_summary(q, ALL) == "dense: triton for batch <= 32, else cuda; packed: cuda"
    assert backends.auto_summary(query(512, 1), ALL) == "cuda"
    assert backends.auto_summary(query(256, 1, op="cell"), ALL) == "cuda"


def test_module_repr_says_what_auto_runs_by_batch_and_how_to_ask_why(monkeypatch):
    pretend_gpu(monkeypatch)
    weight = SimpleNamespace(device=torch.device("cuda"), dtype=torch.bfloat16)  # a CUDA parameter's
    assert backends.module_note("auto", weight, "layer", 256, 0) == (
        " (sm_90 bfloat16: dense: triton for batch <= 32, else cuda; packed: cuda; "
        "why: fusedlstm info --hidden-size 256 --dtype bfloat16 --batch B)")
    assert backends.module_note("cuda", weight, "layer", 256, 0) == ""  # named, not chosen
    assert backends.module_note("auto", torch.empty(1), "layer", 256, 0) == ""  # CPU: the cpu backend


def test_info_explains_the_choice_for_given_work(capsys):
    assert cli.main(["info", "--hidden-size", "128", "--batch", "8", "--dtype", "bfloat16",
                     "--arch", "sm_90"]) == 0
    line = next(l for l in capsys.readouterr().out.splitlines() if l.startswith("auto for CUDA tensors"))
    usable = backends.available_backends("cuda")
    expected = next(n for n in ("triton", "cuda", "reference") if n in usable)
    assert f": {expected} (" in line and "small-h128" in line and "sm_90" in line
    assert cli.main(["info", "--hidden-size", "128", "--arch", "sm_75"]) == 0
    assert "no recorded GPU run covers" in capsys.readouterr().out


def test_float32_choice_follows_the_precision_setting(monkeypatch):
    saved = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        pretend_gpu(monkeypatch)
        # TF32 was never measured: the default.
        assert backends.resolve("auto", torch.device("cuda"), "layer", torch.float32, 128, 0, 8).name == "cuda"
        torch.set_float32_matmul_precision("highest")
        assert backends.resolve("auto", torch.device("cuda"), "layer", torch.float32, 128, 0, 8).name == "triton"
    finally:
        torch.set_float32_matmul_precision(saved)


def test_eager_modules_pass_their_work_to_resolve(monkeypatch):
    """Each layer and direction of an eager FusedLSTM forward, and each
    FusedLSTMCell step, asks for its backend with its own work: op, dtype,
    H, proj_size, batch, packed or not (on CPU tensors the answer is "cpu",
    but the question is the one a CUDA forward asks)."""
    asked = []
    resolve = backends.resolve

    def recording(name, device, *work):
        asked.append(work)
        return resolve(name, device, *work)

    monkeypatch.setattr(backends, "resolve", recording)
    lstm = FusedLSTM(3, 6, num_layers=2, proj_size=4, bidirectional=True, dtype=torch.float64)
    lstm(torch.randn(5, 2, 3, dtype=torch.float64))
    assert asked == [("layer", torch.float64, 6, 4, 2, False)] * 4
    asked.clear()
    packed = torch.nn.utils.rnn.pack_sequence([torch.randn(4, 3), torch.randn(2, 3), torch.randn(1, 3)])
    FusedLSTM(3, 5)(packed)
    assert asked == [("layer", torch.float32, 5, 0, 3, True)]
    asked.clear()
    FusedLSTMCell(3, 7)(torch.randn(2, 3))
    assert asked == [("cell", torch.float32, 7, 0, 2)]


def test_cpu_modules_keep_their_repr():
    assert repr(FusedLSTM(3, 4)).endswith("backend='auto')")


@pytest.mark.cuda
def test_gpu_module_runs_and_shows_its_choice():
    skip_unless_gpu("cuda")
    lstm = FusedLSTM(16, 128, dtype=torch.bfloat16, device="cuda")
    arch = backends.gpu_arch(None)
    assert f"backend='auto' ({arch} bfloat16: " in repr(lstm)
    x = torch.randn(20, 8, 16, dtype=torch.bfloat16, device="cuda")
    chosen = backends.resolve("auto", x.device, "layer", x.dtype, 128, 0, 8, False).name
    explicit = FusedLSTM(16, 128, dtype=torch.bfloat16, device="cuda", backend=chosen)
    explicit.load_state_dict(lstm.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(lstm(x)[0], explicit(x)[0], rtol=0, atol=0)
