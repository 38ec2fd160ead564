"""Saving, tracing and exporting models that hold FusedLSTM and FusedLSTMCell:
whole modules through torch.save and torch.load(weights_only=True) in a fresh
process; torch.jit.trace and torch.export graphs that are the same whatever
the grad mode at trace time, keep no activations when run for inference and
train when run for training; torch.jit.script's refusal; the op those graphs
hold (fusedlstm::lstm_layer) under opcheck and gradcheck; ONNX export (both
exporters) run in ONNX Runtime."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM, FusedLSTMCell, backends, layer
from lstm_testing import LAYER_CONFIGS, LAYER_IDS, assert_close, layer_sample


class Model(nn.Module):
    """An LSTM and a head: what tracing and export see as a user's model."""

    def __init__(self, dtype=torch.float32, **lstm):
        super().__init__()
        torch.manual_seed(0)
        self.lstm = FusedLSTM(4, 6, dtype=dtype, **lstm)
        out = 6 * (2 if lstm.get("bidirectional") else 1)
        self.head = nn.Linear(out, 3, dtype=dtype)

    def forward(self, x, hx=None):
        out, (h_n, c_n) = self.lstm(x, hx)
        return self.head(out), h_n, c_n


def saves_of(fn, *args):
    """fn(*args), and the set of save_for_backward values that the contract's
    layer op ran with (read from the profiler, which sees every op call)."""
    with torch.profiler.profile(record_shapes=True) as profile:
        result = fn(*args)
    saves = {event.concrete_inputs[-1] for event in profile.events()
             if event.name.endswith("lstm_layer_fwd")}
    assert saves, "no fusedlstm layer op ran"
    return result, saves


def eager_gradients(model, x):
    model.zero_grad()
    sum(t.sum() for t in model(x)).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return grads


def assert_trains_like_eager(run, model, x):
    """`run` (a traced or exported model) differentiates, and gives eager's gradients."""
    expected = eager_gradients(model, x)
    outputs, saves = saves_of(run, x)
    assert saves == {True}
    sum(t.sum() for t in outputs).backward()
    for p, e in zip(model.parameters(), expected):
        assert_close(p.grad, e, torch.float64)


# --- whole models through torch.save and torch.load(weights_only=True) ------------------------

LOAD_AND_RUN = """
import sys, torch
{imports}
modules = torch.load(sys.argv[1])  # weights_only=True, torch's default
x = torch.load(sys.argv[2])
program = torch.export.load(sys.argv[4])
torch.save((modules["lstm"](x)[0], modules["cell"](x[0])[0], program.module()(x)[0]), sys.argv[3])
"""


def run_python(code, *args):
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))


def test_modules_and_exported_programs_load_in_a_fresh_process(tmp_path):
    """torch.save'd modules load with weights_only=True, and torch.export.save'd
    programs with torch.export.load, in a process that imports fusedlstm."""
    torch.manual_seed(0)
    modules = {"lstm": FusedLSTM(3, 5, num_layers=2, bidirectional=True, proj_size=2).eval(),
               "cell": FusedLSTMCell(3, 5)}
    x = torch.randn(4, 2, 3)
    torch.save(modules, tmp_path / "modules.pt")
    torch.save(x, tmp_path / "x.pt")
    torch.export.save(torch.export.export(modules["lstm"], (x,)), tmp_path / "lstm.pt2")
    paths = (tmp_path / "modules.pt", tmp_path / "x.pt", tmp_path / "out.pt", tmp_path / "lstm.pt2")

    done = run_python(LOAD_AND_RUN.format(imports="import fusedlstm"), *paths)
    assert done.returncode == 0, done.stderr[-4000:]
    lstm_out, cell_out, program_out = torch.load(paths[2])
    with torch.no_grad():
        expected = modules["lstm"](x)[0]
        torch.testing.assert_close(lstm_out, expected, rtol=0, atol=0)
        torch.testing.assert_close(program_out, expected, rtol=0, atol=0)
        torch.testing.assert_close(cell_out, modules["cell"](x[0])[0], rtol=0, atol=0)
    # What makes them loadable is importing fusedlstm.
    done = run_python(LOAD_AND_RUN.format(imports=""), *paths)
    assert done.returncode != 0 and "fusedlstm.lstm.FusedLSTM" in done.stderr


# --- torch.jit.trace -------------------------------------------------------------------------

CONFIGS = [dict(num_layers=2), dict(num_layers=2, bidirectional=True, batch_first=True, bias=False)]


def trace(model, x, grad: bool, training: bool):
    model.train(training)
    with torch.set_grad_enabled(grad), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.trace's deprecation
        return torch.jit.trace(model, (x,))  # check_trace: traced again and compared


def node_kinds(traced):
    return [node.kind() for node in traced.inlined_graph.nodes()]


@pytest.mark.parametrize("config", CONFIGS, ids=["2-layer", "bidirectional"])
def test_jit_trace_is_the_same_graph_whatever_the_grad_mode(config):
    model, x = Model(**config), torch.randn(5, 3, 4)
    graphs = [node_kinds(trace(model, x, grad, training))
              for grad, training in itertools.product([True, False], [True, False])]
    assert all(g == graphs[0] for g in graphs)
    layers = 2 * (2 if config.get("bidirectional") else 1)
    assert graphs[0].count("fusedlstm::lstm_layer") == layers


@pytest.mark.parametrize("grad", [True, False], ids=["traced-with-grad", "traced-without-grad"])
def test_traced_model_keeps_nothing_for_inference_and_trains(grad):
    model, x = Model(torch.float64, num_layers=2), torch.randn(5, 3, 4, dtype=torch.float64)
    traced = trace(model, x, grad, training=False)
    with torch.no_grad():
        (out, _, _), saves = saves_of(traced, x)
        assert saves == {False}
        assert_close(out, model(x)[0], torch.float64)
    assert_trains_like_eager(traced, model, x)


# --- torch.export ----------------------------------------------------------------------------

def export(model, x, grad: bool, training: bool):
    model.train(training)
    with torch.set_grad_enabled(grad):
        return torch.export.export(model, (x,))


def call_targets(program):
    return [str(node.target) for node in program.graph.nodes if node.op == "call_function"]


def test_torch_export_is_the_same_graph_whatever_the_grad_mode():
    model, x = Model(**CONFIGS[1]), torch.randn(3, 5, 4)
    graphs = [call_targets(export(model, x, grad, training))
              for grad, training in itertools.product([True, False], [True, False])]
    assert all(g == graphs[0] for g in graphs)
    assert graphs[0].count("fusedlstm.lstm_layer.default") == 4


@pytest.mark.parametrize("grad", [True, False], ids=["exported-with-grad", "exported-without-grad"])
def test_exported_model_keeps_nothing_for_inference_and_trains(grad):
    model, x = Model(torch.float64, num_layers=2), torch.randn(5, 3, 4, dtype=torch.float64)
    exported = export(model, x, grad, training=False).module()
    with torch.no_grad():
        (out, _, _), saves = saves_of(exported, x)
        assert saves == {False}
        assert_close(out, model(x)[0], torch.float64)
    assert_trains_like_eager(exported, model, x)


# --- torch.jit.script ------------------------------------------------------------------------

@pytest.mark.parametrize("make", [Model, lambda: FusedLSTMCell(3, 4)],
                         ids=["model-with-FusedLSTM", "FusedLSTMCell"])
def test_torchscript_refuses_and_names_the_alternatives(make):
    with pytest.raises(RuntimeError, match=r"cannot be compiled by torch\.jit\.script.*torch\.compile"
                                           r".*torch\.export"):
        torch.jit.script(make())


# --- the op of traced graphs: fusedlstm::lstm_layer -----------------------------------------

def layer_op_args(layout, proj, reverse, bias=True, backend="reference", small=False):
    """Arguments of fusedlstm::lstm_layer in float64: input [.., I], nn.LSTM's weights
    (`small`: fewer elements, for finite differences)."""
    sizes = dict(H=3, P=2, lengths=(3, 2, 1)) if small else {}
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = layer_sample(layout, proj, reverse, **sizes)
    g = torch.Generator().manual_seed(1)
    H, I = c0.shape[1], 2 if small else 4
    input = torch.randn(*x_proj.shape[:-1], I, dtype=torch.float64, generator=g)
    w_ih = torch.randn(4 * H, I, dtype=torch.float64, generator=g)
    b_ih, b_hh = (torch.randn(4 * H, dtype=torch.float64, generator=g) for _ in range(2))
    if not bias:
        b_ih = b_hh = None
    return [input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, reverse, backend]


def op_backends():
    return [name for name in ("cpu", "reference") if backends.BACKENDS[name].unavailable("cpu") is None]


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("layout,proj,reverse", [c for c in LAYER_CONFIGS if c[2]],
                         ids=[i for c, i in zip(LAYER_CONFIGS, LAYER_IDS) if c[2]])
def test_lstm_layer_op_passes_opcheck(layout, proj, reverse, backend):
    if backend == "reference" and layout == "packed":
        pytest.skip("the reference backend reads batch_sizes' values in Python, which "
                    "opcheck's traced (fake tensor) runs cannot")
    args = layer_op_args(layout, proj, reverse, bias=not proj, backend=backend)
    args = [a.requires_grad_() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in args]
    torch.library.opcheck(torch.ops.fusedlstm.lstm_layer.default, args)


def differentiable(args):
    """The positions of args' floating-point tensors, and fresh leaves of them that require grad."""
    positions = [k for k, a in enumerate(args) if isinstance(a, torch.Tensor) and a.is_floating_point()]
    return positions, [args[k].clone().requires_grad_() for k in positions]


def call_op(args, positions, values):
    call = list(args)
    for k, v in zip(positions, values):
        call[k] = v
    return torch.ops.fusedlstm.lstm_layer(*call)


@pytest.mark.parametrize("backend", op_backends())
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_lstm_layer_op_matches_the_eager_layer_and_its_gradients(layout, proj, reverse, backend):
    args = layer_op_args(layout, proj, reverse, backend=backend)
    positions, leaves = differentiable(args)
    actual = call_op(args, positions, leaves)
    input, w_ih, w_hh, b_ih, b_hh, w_hr, h0, c0, batch_sizes, _, _ = args
    expected = layer.compute(input, layer.LayerWeights(w_ih, w_hh, b_ih, b_hh, w_hr), h0, c0,
                             batch_sizes, reverse, "reference")
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)
    # Gradients against autograd through the reference backend's plain PyTorch.
    weights = [torch.randn(t.shape, dtype=t.dtype, generator=torch.Generator().manual_seed(k))
               for k, t in enumerate(actual)]
    grads = torch.autograd.grad(actual, leaves, weights)
    _, ref_leaves = differentiable(args)
    ref_args = list(args)
    ref_args[-1] = "reference"
    expected_grads = torch.autograd.grad(call_op(ref_args, positions, ref_leaves), ref_leaves, weights)
    for a, e in zip(grads, expected_grads):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("layout,proj,reverse", [("dense", False, True), ("packed", True, False)])
def test_lstm_layer_op_gradcheck(layout, proj, reverse):
    args = layer_op_args(layout, proj, reverse, backend=op_backends()[0], small=True)
    positions, leaves = differentiable(args)
    assert torch.autograd.gradcheck(lambda *values: call_op(args, positions, values), leaves)


# --- ONNX ------------------------------------------------------------------------------------

@pytest.fixture
def onnxruntime():
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install '.[test]')")
    return pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install '.[test]')")


def export_onnx(module, args, path, dynamo, dynamic_shapes=None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter's
        torch.onnx.export(module, args, str(path), dynamo=dynamo, dynamic_shapes=dynamic_shapes)


def onnx_ops(path):
    import onnx

    return {node.op_type for node in onnx.load(str(path)).graph.node}


def run_onnx(onnxruntime, path, *inputs):
    session = onnxruntime.InferenceSession(str(path))
    feeds = {i.name: t.numpy() for i, t in zip(session.get_inputs(), inputs)}
    return [torch.from_numpy(a) for a in session.run(None, feeds)]


@pytest.mark.slow
@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
def test_onnx_export_of_fused_lstm_runs_in_onnx_runtime(onnxruntime, tmp_path, dynamo):
    """Each layer and direction becomes one ONNX LSTM node; with the dynamo
    exporter, the sequence length and batch stay dynamic."""
    model = Model(num_layers=2, bidirectional=True).eval()
    x, hx = torch.randn(5, 3, 4), (torch.randn(4, 3, 6), torch.randn(4, 3, 6))
    dynamic = ({0: "T", 1: "B"}, ({1: "B"}, {1: "B"})) if dynamo else None
    export_onnx(model, (x, hx), tmp_path / "lstm.onnx", dynamo, dynamic)
    assert "LSTM" in onnx_ops(tmp_path / "lstm.onnx")
    if dynamo:
        x, hx = torch.randn(9, 2, 4), (torch.randn(4, 2, 6), torch.randn(4, 2, 6))
    with torch.no_grad():
        expected = model(x, hx)
    for a, e in zip(run_onnx(onnxruntime, tmp_path / "lstm.onnx", x, *hx), expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_onnx_export_of_fused_lstm_cell_runs_in_onnx_runtime(onnxruntime, tmp_path):
    torch.manual_seed(0)
    cell = FusedLSTMCell(4, 6, bias=False)
    x, h, c = torch.randn(3, 4), torch.randn(3, 6), torch.randn(3, 6)
    export_onnx(cell, (x, (h, c)), tmp_path / "cell.onnx", dynamo=True)
    assert "LSTM" in onnx_ops(tmp_path / "cell.onnx")
    with torch.no_grad():
        expected = cell(x, (h, c))
    for a, e in zip(run_onnx(onnxruntime, tmp_path / "cell.onnx", x, h, c), expected):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["proj_size", "packed"])
def test_onnx_export_refuses_what_onnx_lstm_cannot_express(onnxruntime, tmp_path, case):
    lstm = FusedLSTM(4, 6, proj_size=3 if case == "proj_size" else 0).eval()
    x = torch.randn(5, 2, 4)
    if case == "packed":
        x = torch.nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 3]))
    message = "no output projection" if case == "proj_size" else "PackedSequence input is not supported"
    with pytest.raises(Exception, match=message):
        export_onnx(lstm, (x,), tmp_path / "refused.onnx", dynamo=True)
