"""Bad input gets nn.LSTM's error type and a message naming what was expected
and what came; ops called directly check their arguments too."""

import pytest
import torch
from torch import nn

from fusedlstm import FusedLSTM, FusedLSTMCell, backends
from lstm_testing import skip_unless_usable

# --- constructor arguments --------------------------------------------------------------

CONSTRUCTOR_CASES = [
    (dict(input_size=0, hidden_size=4), ValueError, "input_size must be greater than zero"),
    (dict(input_size=3, hidden_size=0), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=3, hidden_size=-2), ValueError, "hidden_size must be greater than zero"),
    (dict(input_size=3, hidden_size=4, num_layers=0), ValueError, "num_layers must be greater than zero"),
    (dict(input_size=3.0, hidden_size=4), TypeError, "input_size should be of type int, got: float"),
    (dict(input_size=3, hidden_size="4"), TypeError, "hidden_size should be of type int, got: str"),
    (dict(input_size=3, hidden_size=4, num_layers=1.5), TypeError, "num_layers should be of type int"),
    (dict(input_size=3, hidden_size=4, proj_size=-1), ValueError, "proj_size should be a positive integer"),
    (dict(input_size=3, hidden_size=4, proj_size=4), ValueError, "proj_size has to be smaller than hidden_size"),
    (dict(input_size=3, hidden_size=4, dropout=1.5), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(input_size=3, hidden_size=4, dropout=True), ValueError, r"dropout should be a number in range \[0, 1\]"),
    (dict(input_size=3, hidden_size=4, bias=1), TypeError, "bias should be of type bool, got: int"),
    (dict(input_size=3, hidden_size=4, batch_first="yes"), TypeError, "batch_first should be of type bool"),
    (dict(input_size=3, hidden_size=4, backend="fortran"), ValueError, "backend must be one of .*'fortran'"),
]


@pytest.mark.parametrize("kwargs,error,message", CONSTRUCTOR_CASES)
def test_constructor_rejects(kwargs, error, message):
    with pytest.raises(error, match=message):
        FusedLSTM(**kwargs)


def test_constructor_errors_match_nn_lstm_types():
    for kwargs, error, _ in CONSTRUCTOR_CASES:
        if "backend" in kwargs or "num_layers" in kwargs and isinstance(kwargs["num_layers"], float):
            continue  # no nn.LSTM counterpart / nn.LSTM's own TypeError text differs
        with pytest.raises(error):
            nn.LSTM(**kwargs)


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        FusedLSTM(3, 4, dropout=0.5)


# --- forward arguments ------------------------------------------------------------------

@pytest.fixture
def lstm():
    return FusedLSTM(3, 4, num_layers=2, backend="reference")


def h(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


FORWARD_CASES = [
    ("4-D input", lambda m: m(torch.zeros(2, 3, 4, 3)), ValueError, "Expected input to be 2D or 3D, got 4D instead"),
    ("1-D input", lambda m: m(torch.zeros(3)), ValueError, "Expected input to be 2D or 3D, got 1D instead"),
    ("feature size", lambda m: m(torch.zeros(5, 2, 7)), RuntimeError,
     r"input.size\(-1\) must be equal to input_size. Expected 3, got 7"),
    ("dtype", lambda m: m(torch.zeros(5, 2, 3, dtype=torch.float64)), ValueError,
     r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("integer input", lambda m: m(torch.zeros(5, 2, 3, dtype=torch.long)), ValueError,
     r"input dtype \(torch.int64\) does not match weight dtype"),
    ("empty sequence", lambda m: m(torch.zeros(0, 2, 3)), RuntimeError, "sequence length to be larger than 0"),
    ("h0 batch", lambda m: m(torch.zeros(5, 2, 3), (h(2, 3, 4), h(2, 2, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 3, 4\]"),
    ("c0 size", lambda m: m(torch.zeros(5, 2, 3), (h(2, 2, 4), h(2, 2, 5))), RuntimeError,
     r"Expected hidden\[1\] size \(2, 2, 4\), got \[2, 2, 5\]"),
    ("layers in h0", lambda m: m(torch.zeros(5, 2, 3), (h(1, 2, 4), h(2, 2, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[1, 2, 4\]"),
    ("2-D hx for batched input", lambda m: m(torch.zeros(5, 2, 3), (h(2, 4), h(2, 4))), RuntimeError,
     r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors"),
    ("3-D hx for unbatched input", lambda m: m(torch.zeros(5, 3), (h(2, 1, 4), h(2, 1, 4))), RuntimeError,
     r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors"),
    ("hx dtype", lambda m: m(torch.zeros(5, 2, 3), (h(2, 2, 4), h(2, 2, 4, dtype=torch.float64))), RuntimeError,
     r"hidden\[1\] dtype \(torch.float64\) does not match input dtype \(torch.float32\)"),
    ("hx not a pair", lambda m: m(torch.zeros(5, 2, 3), h(2, 2, 4)), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
    ("not a tensor", lambda m: m([[1.0, 2.0, 3.0]]), TypeError, "expected a Tensor or PackedSequence input, got list"),
    ("packed feature size", lambda m: m(nn.utils.rnn.pack_sequence([torch.zeros(3, 5)])), RuntimeError,
     r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"),
    ("packed h0 batch", lambda m: m(nn.utils.rnn.pack_sequence([torch.zeros(3, 3), torch.zeros(2, 3)]),
                                    (h(2, 1, 4), h(2, 1, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 1, 4\]"),
]


@pytest.mark.parametrize("what,call,error,message", FORWARD_CASES, ids=[c[0] for c in FORWARD_CASES])
def test_forward_rejects(lstm, what, call, error, message):
    with pytest.raises(error, match=message):
        call(lstm)


@pytest.mark.parametrize("what,call,error,message", FORWARD_CASES[:12], ids=[c[0] for c in FORWARD_CASES[:12]])
def test_nn_lstm_raises_the_same_type(what, call, error, message):
    if what == "hx dtype":
        pytest.skip("nn.LSTM raises an unrelated backend error for a mixed-dtype state")
    torch.manual_seed(0)
    with pytest.raises(error):
        call(nn.LSTM(3, 4, num_layers=2))


def test_unknown_backend_for_device_names_available_ones():
    lstm = FusedLSTM(3, 4, backend="cuda")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available for cpu tensors .*available: \["):
        lstm(torch.zeros(5, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to place tensors on two devices")
@pytest.mark.cuda
def test_device_mismatch():
    lstm = FusedLSTM(3, 4, backend="reference")
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        lstm(torch.zeros(5, 2, 3, device="cuda"))
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        lstm(torch.zeros(5, 2, 3), (h(1, 2, 4).cuda(), h(1, 2, 4).cuda()))


def test_device_mismatch_on_meta():
    """The same check without a GPU: parameters on the meta device."""
    lstm = FusedLSTM(3, 4, backend="reference", device="meta")
    with pytest.raises(RuntimeError, match="found input tensor at cpu and parameter tensor at meta"):
        lstm(torch.zeros(5, 2, 3))


# --- FusedLSTMCell ----------------------------------------------------------------------

CELL_CASES = [
    ("3-D input", lambda c: c(torch.zeros(2, 2, 3)), ValueError, "LSTMCell: Expected input to be 1D or 2D, got 3D instead"),
    ("3-D hx", lambda c: c(torch.zeros(2, 3), (h(1, 2, 4), h(2, 4))), ValueError, r"Expected hx\[0\] to be 1D or 2D, got 3D"),
    ("feature size", lambda c: c(torch.zeros(2, 5)), RuntimeError, "input has inconsistent input_size: got 5 expected 3"),
    ("batch", lambda c: c(torch.zeros(2, 3), (h(3, 4), h(3, 4))), RuntimeError, "Input batch size 2 doesn't match hidden0 batch size 3"),
    ("hidden size", lambda c: c(torch.zeros(2, 3), (h(2, 4), h(2, 6))), RuntimeError, "hidden1 has inconsistent hidden_size: got 6, expected 4"),
    ("dtype", lambda c: c(torch.zeros(2, 3, dtype=torch.float64)), ValueError, r"input dtype \(torch.float64\) does not match weight dtype"),
]


@pytest.mark.parametrize("what,call,error,message", CELL_CASES, ids=[c[0] for c in CELL_CASES])
def test_cell_rejects(what, call, error, message):
    with pytest.raises(error, match=message):
        call(FusedLSTMCell(3, 4, backend="reference"))


def test_cell_constructor_rejects():
    with pytest.raises(ValueError, match="hidden_size must be greater than zero"):
        FusedLSTMCell(3, 0)


# --- ops called directly ----------------------------------------------------------------

f64 = dict(dtype=torch.float64)

OP_CASES = [
    ("cell gates width", lambda o: o.cell_fwd(torch.zeros(2, 7), torch.zeros(2, 2)),
     r"gates must have shape \[2, 8\], got \[2, 7\]"),
    ("cell dtype", lambda o: o.cell_fwd(torch.zeros(2, 8), torch.zeros(2, 2, **f64)),
     r"c_prev must have dtype (Float|torch\.float32) like gates, got (Double|torch\.float64)"),
    ("cell integer", lambda o: o.cell_fwd(torch.zeros(2, 8, dtype=torch.int32), torch.zeros(2, 2)),
     r"gates must be float32, float64, float16 or bfloat16, got (Int|torch\.int32)"),
    ("layer w_hh", lambda o: o.layer_fwd(torch.zeros(3, 2, 8), torch.zeros(8, 3), torch.zeros(2, 2),
                                         torch.zeros(2, 2), None, None, False, False),
     r"without w_hr, w_hh must be \[4H, H\] = \[8, 2\], got \[8, 3\]"),
    ("layer h0", lambda o: o.layer_fwd(torch.zeros(3, 2, 8), torch.zeros(8, 2), torch.zeros(3, 2),
                                       torch.zeros(2, 2), None, None, False, False),
     r"h0 must have shape \[2, 2\], got \[3, 2\]"),
    ("layer x_proj", lambda o: o.layer_fwd(torch.zeros(3, 2, 9), torch.zeros(8, 2), torch.zeros(2, 2),
                                           torch.zeros(2, 2), None, None, False, False),
     r"x_proj must have shape \[3, 2, 8\], got \[3, 2, 9\]"),
    ("layer w_hr", lambda o: o.layer_fwd(torch.zeros(3, 2, 8), torch.zeros(8, 1), torch.zeros(2, 1),
                                         torch.zeros(2, 2), torch.zeros(2, 2), None, False, False),
     r"w_hr must have shape \[1, 2\], got \[2, 2\]"),
    ("batch_sizes increasing", lambda o: o.layer_fwd(torch.zeros(5, 8), torch.zeros(8, 2), torch.zeros(2, 2),
                                                     torch.zeros(2, 2), None, torch.tensor([2, 1, 2]), False, False),
     "batch_sizes must be positive and non-increasing"),
    ("batch_sizes sum", lambda o: o.layer_fwd(torch.zeros(4, 8), torch.zeros(8, 2), torch.zeros(2, 2),
                                              torch.zeros(2, 2), None, torch.tensor([2, 1]), False, False),
     r"x_proj must have shape \[3, 8\], got \[4, 8\]"),
    ("batch_sizes vs h0", lambda o: o.layer_fwd(torch.zeros(4, 8), torch.zeros(8, 2), torch.zeros(2, 2),
                                                torch.zeros(2, 2), None, torch.tensor([3, 1]), False, False),
     r"batch_sizes\[0\] \(3\) must equal the batch size of h0 and c0 \(2\)"),
    ("batch_sizes dtype", lambda o: o.layer_fwd(torch.zeros(3, 8), torch.zeros(8, 2), torch.zeros(2, 2),
                                                torch.zeros(2, 2), None, torch.tensor([2.0, 1.0]), False, False),
     "batch_sizes must be a 1-D int64 CPU tensor"),
    ("bwd without saved activations", lambda o: o.layer_bwd(
        None, None, None, torch.zeros(8, 2), torch.zeros(2, 2), torch.zeros(2, 2), None, None, False,
        torch.zeros(3, 2, 2), torch.zeros(3, 2, 8), torch.zeros(0), torch.zeros(0)),
     r"was the forward run with save_for_backward=True"),
    ("bwd h_raw with a projection", lambda o: o.layer_bwd(
        None, None, None, torch.zeros(8, 1), torch.zeros(2, 1), torch.zeros(2, 2), torch.zeros(1, 2), None, False,
        torch.zeros(3, 2, 1), torch.zeros(3, 2, 8), torch.zeros(3, 2, 2), torch.zeros(0)),
     r"with w_hr, h_raw must have shape \[3, 2, 2\] \(lstm_layer_fwd's h_raw\), got \[0\]"),
    ("bwd h_raw without a projection", lambda o: o.layer_bwd(
        None, None, None, torch.zeros(8, 2), torch.zeros(2, 2), torch.zeros(2, 2), None, None, False,
        torch.zeros(3, 2, 2), torch.zeros(3, 2, 8), torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)),
     r"without w_hr, h_raw must be empty \(as lstm_layer_fwd returns it\), got shape \[3, 2, 2\]"),
]


def contract_ops(backend):
    """The ContractOps of a backend that implements the op contract (skips if unusable)."""
    skip_unless_usable(backend, "cpu")
    return backends.BACKENDS[backend].implementation()


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("what,call,message", OP_CASES, ids=[c[0] for c in OP_CASES])
def test_ops_reject(backend, what, call, message):
    implementation = contract_ops(backend)
    with pytest.raises(RuntimeError, match=message):
        call(implementation)
