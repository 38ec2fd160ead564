"""LSTM gate math as Triton device functions: the formulas of
csrc/include/fusedlstm/gate_math.h, shared by the cell and persistent kernels.

Gate order (i, f, g, o); for one hidden unit with pre-activations
(pi, pf, pg, po) and previous cell state c_prev:

    i = sigmoid(pi)  f = sigmoid(pf)  g = tanh(pg)  o = sigmoid(po)
    c = f * c_prev + i * g            h = o * tanh(c)

Backward, with dh, dc the gradients reaching h and c, tc = tanh(c):

    dc_total = dc + dh * o * (1 - tc^2)
    d_pi = dc_total * g * i * (1 - i)        d_pf = dc_total * c_prev * f * (1 - f)
    d_pg = dc_total * i * (1 - g^2)          d_po = dh * tc * o * (1 - o)
    dc_prev = dc_total * f

Every function works on tiles of any shape and computes in the dtype of its
arguments; the kernels pass float32 (float64 for float64 data), so half and
bfloat16 data is computed in float32, as by every backend.
"""

import triton
import triton.language as tl


@triton.jit
def sigmoid(x):
    # exp(-x) overflows to +inf for x < -88 (float32): 1 / inf = 0, no NaN.
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def tanh(x):
    # From exp(-2|x|) <= 1, which cannot overflow. Not libdevice.tanh: the
    # Triton interpreter (TRITON_INTERPRET=1, Triton 3.8) returns None for
    # libdevice calls. Absolute error ~1 ulp of 1 near x = 0, inside the
    # suite's float32 / float64 tolerances (atol 1e-5 / 1e-10).
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def gates_forward(pi, pf, pg, po, c_prev):
    """Pre-activations and c_prev -> (i, f, g, o, c, h)."""
    i = sigmoid(pi)
    f = sigmoid(pf)
    g = tanh(pg)
    o = sigmoid(po)
    c = f * c_prev + i * g
    h = o * tanh(c)
    return i, f, g, o, c, h


@triton.jit
def gates_backward(i, f, g, o, c_prev, c, dh, dc):
    """Activations, c_prev, c and the gradients reaching h and c
    -> (d_pi, d_pf, d_pg, d_po, dc_prev)."""
    tc = tanh(c)
    dc_total = dc + dh * o * (1.0 - tc * tc)
    d_pi = dc_total * g * i * (1.0 - i)
    d_pf = dc_total * c_prev * f * (1.0 - f)
    d_pg = dc_total * i * (1.0 - g * g)
    d_po = dh * tc * o * (1.0 - o)
    return d_pi, d_pf, d_pg, d_po, dc_total * f


@triton.jit
def load_gates(ptr, at, gap, mask, TY: tl.constexpr):
    """The four gate tiles i, f, g, o at ptr + at and `gap`, 2 gap and 3 gap
    further (gap = H within gate-major rows [4H]; H * P between the gate blocks
    of W_hh [4H, P]); masked-off elements read 0; converted to TY."""
    return (tl.load(ptr + at, mask=mask, other=0.0).to(TY),
            tl.load(ptr + at + gap, mask=mask, other=0.0).to(TY),
            tl.load(ptr + at + 2 * gap, mask=mask, other=0.0).to(TY),
            tl.load(ptr + at + 3 * gap, mask=mask, other=0.0).to(TY))


@triton.jit
def store_gates(ptr, at, gap, i, f, g, o, mask):
    """Stores four gate tiles where load_gates reads them, in ptr's dtype."""
    out_ty = ptr.dtype.element_ty
    tl.store(ptr + at, i.to(out_ty), mask=mask)
    tl.store(ptr + at + gap, f.to(out_ty), mask=mask)
    tl.store(ptr + at + 2 * gap, g.to(out_ty), mask=mask)
    tl.store(ptr + at + 3 * gap, o.to(out_ty), mask=mask)
