"""FusedLSTM's weight_dropout (DropConnect on W_hh) and variational_dropout (one
input mask per sequence): where the masks apply, how often they are drawn, the
values against a hand-built reference, and that nothing else changes."""

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from fusedlstm import FusedLSTM, ops, regularisers
from lstm_testing import assert_close, backend_params, skip_unless_usable

I, H, T, B = 4, 6, 5, 3
LENGTHS = torch.tensor([3, 5, 2])  # unsorted: packing reorders the sequences


def hand_mask(shape, p, dtype):
    """The mask the module draws next from the default generator."""
    uniform = torch.rand(shape, dtype=torch.promote_types(dtype, torch.float32))
    return (uniform < 1 - p).to(dtype) / (1 - p)


def hand_reference(fused, x, lengths, p_weight, p_input):
    """fused's training forward built by hand from one-layer nn.LSTMs, drawing the
    masks in the documented order (per layer: the input's, then each direction's
    W_hh). x: padded [T, B, I]; lengths: None (dense) or per sequence. Returns
    (output padded [T, B, D*P], h_n, c_n, {parameter name: leaf copy})."""
    leaves = {name: p.detach().clone().requires_grad_() for name, p in fused.named_parameters()}
    order = None if lengths is None else torch.sort(lengths, descending=True)[1]  # packed row -> sequence
    layer_input, h_n, c_n = x, [], []
    for layer in range(fused.num_layers):
        mask = hand_mask((x.size(1), layer_input.size(-1)), p_input, x.dtype)
        if order is not None:  # the mask's rows follow the packed (sorted) order
            mask = mask[torch.argsort(order)]
        layer_input = layer_input * mask
        with torch.random.fork_rng(devices=[]):  # its initialisation draws nothing from the masks' stream
            one = nn.LSTM(layer_input.size(-1), fused.hidden_size, bidirectional=fused.bidirectional,
                          proj_size=fused.proj_size, dtype=x.dtype)
        weights = {}
        for direction in range(fused.num_directions):
            suffix = "_reverse" if direction else ""
            for name in fused._all_weights[layer * fused.num_directions + direction]:
                value = leaves[name]
                if name.startswith("weight_hh"):
                    value = value * hand_mask(value.shape, p_weight, x.dtype)
                weights[name.split("_l")[0] + "_l0" + suffix] = value
        inp = layer_input if lengths is None else pack_padded_sequence(layer_input, lengths,
                                                                       enforce_sorted=False)
        out, (h, c) = functional_call(one, weights, (inp,))
        if lengths is not None:
            out = pad_packed_sequence(out, total_length=x.size(0))[0]
        h_n.append(h)
        c_n.append(c)
        layer_input = out
    return layer_input, torch.cat(h_n), torch.cat(c_n), leaves


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_training_forward_and_gradients_match_the_hand_built_reference(backend, device, kind):
    """Two calls in a row: each uses its own masks (drawn afresh per call), one W_hh mask
    for all steps of a layer and direction, one input mask per sequence and layer."""
    skip_unless_usable(backend, device)
    if device != "cpu":
        pytest.skip("the hand reference draws its masks from the CPU generator")
    dtype, p_weight, p_input = torch.float64, 0.4, 0.3
    torch.manual_seed(0)
    fused = FusedLSTM(I, H, num_layers=2, bidirectional=True, proj_size=3, dtype=dtype, backend=backend,
                      weight_dropout=p_weight, variational_dropout=p_input)
    x = torch.randn(T, B, I, dtype=dtype)
    lengths = LENGTHS if kind == "packed" else None
    weighting = torch.Generator().manual_seed(1)
    out_w = torch.randn(T, B, 6, dtype=dtype, generator=weighting)
    if lengths is not None:  # padding positions contribute nothing
        out_w = out_w * (torch.arange(T)[:, None] < lengths[None, :]).unsqueeze(-1)
    state_w = torch.randn(4, B, 3, dtype=dtype, generator=weighting)
    outputs = []
    for call in range(2):
        torch.manual_seed(10 + call)
        leaf = x.clone().requires_grad_()
        inp = leaf if lengths is None else pack_padded_sequence(leaf, lengths, enforce_sorted=False)
        fused.zero_grad()
        out, (h_n, c_n) = fused(inp)
        if lengths is not None:
            out = pad_packed_sequence(out, total_length=T)[0]
        ((out * out_w).sum() + (h_n * state_w).sum() + c_n.sum()).backward()

        torch.manual_seed(10 + call)
        expected_leaf = x.clone().requires_grad_()
        e_out, e_h, e_c, leaves = hand_reference(fused, expected_leaf, lengths, p_weight, p_input)
        ((e_out * out_w).sum() + (e_h * state_w).sum() + e_c.sum()).backward()
        for name, actual, expected in [("output", out, e_out), ("h_n", h_n, e_h), ("c_n", c_n, e_c),
                                       ("grad_input", leaf.grad, expected_leaf.grad),
                                       *[(f"grad_{n}", p.grad, leaves[n].grad)
                                         for n, p in fused.named_parameters()]]:
            assert_close(actual, expected, dtype, f"call {call}, {name}")
        outputs.append(out.detach())
    assert not torch.equal(outputs[0], outputs[1])


def gradient_zeros(fused, x):
    """(input gradient == 0, {W_hh name: its gradient == 0}) of one training call:
    where a mask zeroed an element, its gradient is exactly 0."""
    fused.zero_grad()
    leaf = x.clone().requires_grad_()
    out, (h_n, c_n) = fused(leaf)
    (out.sum() + h_n.sum() + c_n.sum()).backward()
    return leaf.grad == 0, {n: p.grad == 0 for n, p in fused.named_parameters() if n.startswith("weight_hh")}


@pytest.mark.parametrize("backend,device", backend_params())
def test_masks_are_per_sequence_and_per_call(backend, device):
    """Seen through the gradients, batch_first: an input element's mask is the same at
    every step of its sequence, differs between sequences, and both masks change at
    every call; nothing is masked in eval()."""
    skip_unless_usable(backend, device)
    torch.manual_seed(0)
    fused = FusedLSTM(32, 16, num_layers=2, batch_first=True, backend=backend, weight_dropout=0.5,
                      variational_dropout=0.5).to(device)
    x = torch.randn(4, 7, 32, device=device)  # [B, T, I]
    first_input, first_weights = gradient_zeros(fused, x)
    second_input, second_weights = gradient_zeros(fused, x)
    for zeros in (first_input, second_input):
        assert torch.equal(zeros, zeros[:, :1].expand_as(zeros))  # constant over the steps
        assert 0.3 < zeros.float().mean() < 0.7
        assert not torch.equal(zeros[0, 0], zeros[1, 0])  # each sequence its own mask
    assert not torch.equal(first_input, second_input)
    for name, zeros in first_weights.items():
        assert 0.4 < zeros.float().mean() < 0.6, name
        assert not torch.equal(zeros, second_weights[name]), name
    assert not torch.equal(first_weights["weight_hh_l0"], first_weights["weight_hh_l1"])

    fused.eval()
    eval_input, eval_weights = gradient_zeros(fused, x)
    assert not eval_input.any() and not any(z.any() for z in eval_weights.values())


@pytest.mark.parametrize("backend,device", backend_params())
@pytest.mark.parametrize("kind", ["padded", "packed"])
def test_eval_mode_equals_nn_lstm_after_to_lstm(backend, device, kind):
    skip_unless_usable(backend, device)
    dtype = torch.float64
    torch.manual_seed(0)
    fused = FusedLSTM(I, H, num_layers=2, bidirectional=True, dropout=0.5, dtype=dtype, backend=backend,
                      weight_dropout=0.5, variational_dropout=0.5).to(device).eval()
    plain = fused.to_lstm()
    assert not plain.training
    x = torch.randn(T, B, I, dtype=dtype, device=device)
    inp = x if kind == "padded" else pack_padded_sequence(x, LENGTHS, enforce_sorted=False)
    out, (h_n, c_n) = fused(inp)
    e_out, (e_h, e_c) = plain(inp)
    if kind == "packed":
        assert isinstance(out, PackedSequence)
        out, e_out = out.data, e_out.data
    for name, a, e in (("output", out, e_out), ("h_n", h_n, e_h), ("c_n", c_n, e_c)):
        assert_close(a, e, dtype, name)


def test_no_extra_state_and_conversions_keep_the_settings():
    config = dict(input_size=3, hidden_size=5, num_layers=2)
    fused = FusedLSTM(**config, weight_dropout=0.25, variational_dropout=0.1)
    assert list(fused.state_dict()) == list(nn.LSTM(**config).state_dict())
    assert not list(fused.buffers())
    assert repr(fused) == ("FusedLSTM(3, 5, num_layers=2, backend='auto', weight_dropout=0.25, "
                           "variational_dropout=0.1)")
    copy = FusedLSTM.from_lstm(fused.to_lstm(), weight_dropout=0.25, variational_dropout=0.1)
    assert (copy.weight_dropout, copy.variational_dropout) == (0.25, 0.1)
    assert FusedLSTM(3, 5).weight_dropout == FusedLSTM(3, 5).variational_dropout == 0.0


@pytest.mark.parametrize("name", ["weight_dropout", "variational_dropout"])
@pytest.mark.parametrize("value", [-0.1, 1.5, "0.5", True])
def test_bad_probabilities_are_errors_naming_the_argument(name, value):
    with pytest.raises(ValueError, match=f"^{name} should be a number in range \\[0, 1\\].*got"):
        FusedLSTM(3, 5, **{name: value})


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("p", [0.1, 0.48, 0.9])
def test_masks_keep_each_value_with_probability_one_minus_p(p, dtype):
    torch.manual_seed(0)
    mask = regularisers.keep_mask((1000, 1000), p, torch.empty(0, dtype=dtype))
    assert mask.dtype == dtype
    kept = mask != 0
    assert set(mask.unique().tolist()) == {0.0, (torch.ones((), dtype=dtype) / (1 - p)).item()}
    # 10^6 draws: the kept fraction's standard deviation is below 5e-4.
    assert abs(kept.double().mean().item() - (1 - p)) < 2.5e-3


def test_probability_one_zeroes_and_keeps_the_graph():
    weight = torch.randn(8, 4, requires_grad=True)
    dropped = regularisers.drop_connect(weight, 1.0)
    assert torch.equal(dropped, torch.zeros_like(weight))
    dropped.sum().backward()
    assert torch.equal(weight.grad, torch.zeros_like(weight))
    x = torch.randn(5, 2, 3)
    assert torch.equal(regularisers.locked_dropout(x, 1.0), torch.zeros_like(x))
    assert regularisers.locked_dropout(x, 0.0) is x and regularisers.drop_connect(weight, 0.0) is weight


def test_packed_rows_follow_their_sequence():
    """Packed data: each row gets the mask of its own sequence, at every step."""
    lengths = torch.tensor([2, 7, 4, 7, 1])
    padded = torch.ones(7, 5, 64)
    packed = pack_padded_sequence(padded, lengths, enforce_sorted=False)
    torch.manual_seed(3)
    dropped = regularisers.locked_dropout(packed.data, 0.5, packed.batch_sizes)
    values = pad_packed_sequence(packed._replace(data=dropped), total_length=7)[0]  # [T, B, I]
    for b, n in enumerate(lengths.tolist()):
        assert torch.equal(values[:n, b], values[:1, b].expand(n, -1)), b
        assert set(values[:n, b].unique().tolist()) <= {0.0, 2.0}
    assert len({tuple(values[0, b].tolist()) for b in range(5)}) == 5


class Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(11, 6)
        self.lstm = FusedLSTM(6, 8, num_layers=2, batch_first=True, weight_dropout=0.3,
                              variational_dropout=0.2)
        self.head = nn.Linear(8, 11)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


@pytest.mark.slow
@pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built")
def test_compiled_training_step_matches_eager(monkeypatch):
    """torch.compile(fullgraph=True) traces the masks; with Inductor drawing its random
    numbers as eager does (fallback_random), the same seed gives the same outputs and
    gradients."""
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "fallback_random", True)
    torch.manual_seed(0)
    model = Model()
    compiled = torch.compile(model, fullgraph=True)
    tokens = torch.randint(0, 11, (3, 7))
    results = []
    for run in (model, compiled):
        model.zero_grad()
        torch.manual_seed(5)
        logits = run(tokens)
        logits.square().sum().backward()
        results.append([logits.detach(), *[p.grad.clone() for p in model.parameters()]])
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-5)
    assert not torch.equal(results[0][0], model.eval()(tokens))  # the masks were in effect


# --- traced and exported graphs --------------------------------------------------------------

def regularised_lstm():
    torch.manual_seed(0)
    return FusedLSTM(4, 6, num_layers=2, weight_dropout=0.5, variational_dropout=0.5)


def traced(lstm, x, how):
    if how == "torch.export":
        return torch.export.export(lstm, (x,)).module()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        return torch.jit.trace(lstm, (x,), check_trace=False)


@pytest.mark.skipif(ops.cpp is None, reason="fusedlstm._C is not built")
@pytest.mark.parametrize("how", ["torch.export", "torch.jit.trace"])
def test_graphs_traced_in_training_mode_draw_fresh_masks_and_eval_graphs_none(how):
    """The masks are drawn as ops in the graph, so a graph traced in training mode
    draws new ones at every call; one traced in eval() has none and equals eager."""
    lstm, x = regularised_lstm(), torch.randn(5, 3, 4)
    training = traced(lstm.train(), x, how)
    assert not torch.equal(training(x)[0], training(x)[0])
    inference = traced(lstm.eval(), x, how)
    with torch.no_grad():
        assert torch.equal(inference(x)[0], inference(x)[0])
        torch.testing.assert_close(inference(x)[0], lstm(x)[0], rtol=0, atol=0)


@pytest.mark.slow
def test_onnx_export_needs_eval_mode_when_the_regularisers_are_on(tmp_path):
    """ONNX's LSTM has no dropout on its recurrence: training mode with the
    regularisers on is refused with the way out; in eval() they are off and the
    model exports."""
    for name in ("onnx", "onnxscript"):
        pytest.importorskip(name, reason=f"{name} is not installed (pip install '.[test]')")
    lstm, x = regularised_lstm(), torch.randn(5, 3, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's own "exporting in training mode"
        with pytest.raises(Exception, match="training mode with weight_dropout or "
                                            "variational_dropout cannot be exported to ONNX.*eval"):
            torch.onnx.export(lstm.train(), (x,), str(tmp_path / "train.onnx"), dynamo=True)
        torch.onnx.export(lstm.eval(), (x,), str(tmp_path / "eval.onnx"), dynamo=True)
    assert (tmp_path / "eval.onnx").stat().st_size > 0
