"""Second derivatives (gradient penalties, Hessian-vector products) through every
backend: gradgradcheck in float64 on the cell and the layer (dense and packed,
with and without a projection, both directions), the modules against nn.LSTM's
double backward, and the first-order backward still on the backend's own op.
Forwards keep their inputs for this only inside fusedlstm.double_backward():
outside it a double backward raises, and the forward keeps nothing more."""

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from fusedlstm import FusedLSTM, FusedLSTMCell, backends, double_backward, reference
from lstm_testing import LAYER_CONFIGS, LAYER_IDS, assert_close, cell_sample, layer_sample, skip_unless_usable

BACKENDS = ["cpu", "reference", "triton"]


def implementation(backend):
    skip_unless_usable(backend, "cpu")
    return backends.BACKENDS[backend]


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradgradcheck_cell(backend):
    cell = implementation(backend).cell
    gates, c_prev = (t.requires_grad_() for t in cell_sample(B=3, H=2))

    def run(gates, c_prev):
        with double_backward():
            return cell(gates, c_prev)

    assert torch.autograd.gradgradcheck(run, (gates, c_prev), fast_mode=backend == "triton")


# Under the interpreter the Triton kernels are slow: two configurations, and gradgradcheck's
# fast mode (a random projection of the Jacobian instead of all of it) for them.
TRITON_CONFIGS = {"dense-proj-rev", "packed-proj-fwd"}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("layout,proj,reverse", LAYER_CONFIGS, ids=LAYER_IDS)
def test_gradgradcheck_layer(backend, layout, proj, reverse):
    if backend == "triton" and LAYER_IDS[LAYER_CONFIGS.index((layout, proj, reverse))] not in TRITON_CONFIGS:
        pytest.skip("the interpreted Triton kernels are slow: two configurations cover them")
    layer = implementation(backend).layer
    x_proj, w_hh, h0, c0, w_hr, batch_sizes, _ = layer_sample(layout, proj, reverse, H=2, P=1, lengths=(3, 2, 1))
    inputs = [t.requires_grad_() for t in (x_proj, w_hh, h0, c0) + ((w_hr,) if proj else ())]

    def run(x_proj, w_hh, h0, c0, w_hr=None):
        with double_backward():
            return layer(x_proj, w_hh, h0, c0, w_hr, batch_sizes, reverse)

    assert torch.autograd.gradgradcheck(run, inputs, fast_mode=backend == "triton")


def gradient_penalty(module, x, hx=None):
    """Backward of a gradient penalty: ||d(output^2)/dx||^2 -> (x.grad, parameter grads)."""
    module.zero_grad()
    leaf = x.detach().requires_grad_()
    with double_backward():
        out = module(leaf, hx)[0]
    (grad,) = torch.autograd.grad(out.pow(2).sum(), leaf, create_graph=True)
    grad.pow(2).sum().backward()
    return [leaf.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("config", [dict(), dict(num_layers=2, bidirectional=True, proj_size=2)],
                         ids=["plain", "2-layer-bidir-proj"])
def test_gradient_penalty_matches_nn_lstm(backend, config):
    """A gradient penalty's gradients equal nn.LSTM's (a backward op that is not
    differentiable would leave them zero)."""
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(0)
    plain = nn.LSTM(3, 4, **config, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(plain, backend=backend)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    expected, actual = gradient_penalty(plain, x), gradient_penalty(fused, x)
    assert expected[0].abs().sum() > 0
    for a, e in zip(actual, expected):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_through_packed_input(backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(1)
    plain = nn.LSTM(3, 4, proj_size=2, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(plain, backend=backend)
    x = torch.randn(4, 3, 3, dtype=torch.float64)
    lengths = torch.tensor([4, 2, 3])

    def run(module):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        with double_backward():
            out = module(pack_padded_sequence(leaf, lengths, enforce_sorted=False))[0].data
        (grad,) = torch.autograd.grad(out.pow(2).sum(), leaf, create_graph=True)
        grad.pow(2).sum().backward()
        return [leaf.grad] + [p.grad for p in module.parameters()]

    for a, e in zip(run(fused), run(plain)):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_penalty_through_the_cell_module(backend):
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(2)
    plain = nn.LSTMCell(3, 4, dtype=torch.float64)
    fused = FusedLSTMCell.from_lstm_cell(plain, backend=backend)
    x = torch.randn(2, 3, dtype=torch.float64)
    hx = tuple(torch.randn(2, 4, dtype=torch.float64) for _ in range(2))
    for a, e in zip(gradient_penalty(fused, x, hx), gradient_penalty(plain, x, hx)):
        assert_close(a, e, torch.float64)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_first_order_backward_runs_the_backends_own_op(backend, monkeypatch):
    """Only create_graph=True takes the reference's formulas."""
    skip_unless_usable(backend, "cpu")

    def forbidden(*args, **kwargs):
        raise AssertionError("the reference ran in a first-order backward")

    fused = FusedLSTM(3, 4, proj_size=2, backend=backend, dtype=torch.float64)
    cell = FusedLSTMCell(3, 4, backend=backend, dtype=torch.float64)
    for name in ("lstm_layer_fwd", "lstm_layer_bwd", "lstm_cell_fwd", "lstm_cell_bwd"):
        monkeypatch.setattr(reference, name, forbidden)
    x = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    fused(x)[0].sum().backward()
    cell(x[0])[0].sum().backward()
    assert x.grad is not None and cell.weight_hh.grad is not None


def saved_bytes(run) -> int:
    """Bytes of the tensors autograd saves while `run()` runs forwards."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    return total


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_double_backward_outside_the_context_raises_and_the_forward_keeps_no_inputs(backend):
    """The backends' ops keep their inputs only inside double_backward(): without it a
    create_graph backward says what to do (never zeros), and the forward saves less."""
    skip_unless_usable(backend, "cpu")
    torch.manual_seed(3)
    fused = FusedLSTM(3, 4, backend=backend, dtype=torch.float64)
    cell = FusedLSTMCell(3, 4, backend=backend, dtype=torch.float64)
    x = torch.randn(5, 2, 3, dtype=torch.float64, requires_grad=True)
    for module, inputs in ((fused, x), (cell, x[0])):
        out = module(inputs)[0]
        with pytest.raises(RuntimeError, match=r"fusedlstm\.double_backward\(\)"):
            torch.autograd.grad(out.pow(2).sum(), x, create_graph=True)
    lean = saved_bytes(lambda: fused(x))
    with double_backward():
        kept = saved_bytes(lambda: fused(x))
    x_proj_bytes = 5 * 2 * 4 * 4 * 8   # [T, B, 4H] float64
    assert kept - lean == x_proj_bytes


def test_the_reference_backend_needs_no_context():
    """Plain PyTorch autograd differentiates the reference's forward twice by itself."""
    torch.manual_seed(4)
    plain = nn.LSTM(3, 4, dtype=torch.float64)
    fused = FusedLSTM.from_lstm(plain, backend="reference")
    x = torch.randn(4, 2, 3, dtype=torch.float64)

    def penalty(module):
        module.zero_grad()
        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(module(leaf)[0].pow(2).sum(), leaf, create_graph=True)
        grad.pow(2).sum().backward()
        return [leaf.grad] + [p.grad for p in module.parameters()]

    for a, e in zip(penalty(fused), penalty(plain)):
        assert_close(a, e, torch.float64)
