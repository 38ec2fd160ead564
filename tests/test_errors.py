"""Bad input, one table: every mistake a user can make with the modules, the ops,
the command line and checkpoint files, with the exception (or exit status) it
must get and a fragment of its message, run against every target that takes
that input (each backend for the modules; the C++ CPU op, the Triton op under
the interpreter, the reference, and the fake rule on fake and meta tensors for
the ops, which must also agree word for word). Messages name the argument as
the caller passed it and say what was expected and what came; the command line
ends in one line on stderr, never a traceback.

Regression tests of single faults (double backward, meta tensors, zero sizes,
run folders, Ctrl-C) follow the table."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Callable

import pytest
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.nn.utils.rnn import PackedSequence, pack_sequence

from charlm_testing import make_corpus, one_thread, python, subprocess_env, tiny_config  # noqa: F401
from fusedlstm import FusedLSTM, FusedLSTMCell, backends, cli, ops, reference
from fusedlstm.charlm import checkpoint as ckpt
from fusedlstm.charlm.errors import CharLMError
from fusedlstm.charlm.train import resume, train
from lstm_testing import skip_unless_usable


@dataclass(frozen=True)
class Case:
    """One bad input. `call(target)` makes the mistake; it must raise `error` (for the
    command line: exit with status `error`) with a message matching `message`."""

    id: str
    kind: str            # "constructor", "module", "cell module", "op", "cli", "checkpoint"
    call: Callable
    error: type | int
    message: str
    needs_values: bool = False  # op cases: the fault is in batch_sizes' values (unseen by fake tensors)


def cases(kind, rows, error=None):
    """Cases of one kind from rows (id, call, [error,] message, ...); `error` when all share it."""
    if error is not None:
        return [Case(row[0], kind, row[1], error, *row[2:]) for row in rows]
    return [Case(row[0], kind, *row[1:]) for row in rows]


def t(*shape, dtype=torch.float32):
    return torch.zeros(*shape, dtype=dtype)


f64 = dict(dtype=torch.float64)
i32 = dict(dtype=torch.int32)

# --- constructors -------------------------------------------------------------------------------

CONSTRUCTOR = cases("constructor", [
    ("input_size 0", dict(input_size=0, hidden_size=4), ValueError, "input_size must be greater than zero"),
    ("hidden_size 0", dict(input_size=3, hidden_size=0), ValueError, "hidden_size must be greater than zero"),
    ("hidden_size -2", dict(input_size=3, hidden_size=-2), ValueError, "hidden_size must be greater than zero"),
    ("num_layers 0", dict(input_size=3, hidden_size=4, num_layers=0), ValueError,
     "num_layers must be greater than zero"),
    ("input_size float", dict(input_size=3.0, hidden_size=4), TypeError, "input_size should be of type int, got: float"),
    ("hidden_size str", dict(input_size=3, hidden_size="4"), TypeError, "hidden_size should be of type int, got: str"),
    ("num_layers float", dict(input_size=3, hidden_size=4, num_layers=1.5), TypeError,
     "num_layers should be of type int"),
    ("proj_size -1", dict(input_size=3, hidden_size=4, proj_size=-1), ValueError,
     "proj_size should be a positive integer"),
    ("proj_size = hidden", dict(input_size=3, hidden_size=4, proj_size=4), ValueError,
     "proj_size has to be smaller than hidden_size"),
    ("dropout 1.5", dict(input_size=3, hidden_size=4, dropout=1.5), ValueError,
     r"dropout should be a number in range \[0, 1\]"),
    ("dropout bool", dict(input_size=3, hidden_size=4, dropout=True), ValueError,
     r"dropout should be a number in range \[0, 1\]"),
    ("bias int", dict(input_size=3, hidden_size=4, bias=1), TypeError, "bias should be of type bool, got: int"),
    ("batch_first str", dict(input_size=3, hidden_size=4, batch_first="yes"), TypeError,
     "batch_first should be of type bool"),
    ("backend fortran", dict(input_size=3, hidden_size=4, backend="fortran"), ValueError,
     "backend must be one of .*'fortran'"),
    ("cell hidden_size 0", dict(input_size=3, hidden_size=0, cell=True), ValueError,
     "hidden_size must be greater than zero"),
])

# --- FusedLSTM(3, 4, num_layers=2) forward --------------------------------------------------------


def packed(data, batch_sizes, *indices):
    return PackedSequence(data, batch_sizes, *indices)


MODULE = cases("module", [
    ("4-D input", lambda m: m(t(2, 3, 4, 3)), ValueError, "Expected input to be 2D or 3D, got 4D instead"),
    ("1-D input", lambda m: m(t(3)), ValueError, "Expected input to be 2D or 3D, got 1D instead"),
    ("feature size", lambda m: m(t(5, 2, 7)), RuntimeError,
     r"input.size\(-1\) must be equal to input_size. Expected 3, got 7"),
    ("dtype", lambda m: m(t(5, 2, 3, **f64)), ValueError,
     r"input dtype \(torch.float64\) does not match weight dtype \(torch.float32\)"),
    ("integer input", lambda m: m(torch.zeros(5, 2, 3, dtype=torch.long)), ValueError,
     r"input dtype \(torch.int64\) does not match weight dtype"),
    ("empty sequence", lambda m: m(t(0, 2, 3)), RuntimeError, "sequence length to be larger than 0"),
    ("h0 batch", lambda m: m(t(5, 2, 3), (t(2, 3, 4), t(2, 2, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 3, 4\]"),
    ("c0 size", lambda m: m(t(5, 2, 3), (t(2, 2, 4), t(2, 2, 5))), RuntimeError,
     r"Expected hidden\[1\] size \(2, 2, 4\), got \[2, 2, 5\]"),
    ("layers in h0", lambda m: m(t(5, 2, 3), (t(1, 2, 4), t(2, 2, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[1, 2, 4\]"),
    ("2-D hx for batched input", lambda m: m(t(5, 2, 3), (t(2, 4), t(2, 4))), RuntimeError,
     r"For batched 3-D input, hx and cx should also be 3-D but got \(2-D, 2-D\) tensors"),
    ("3-D hx for unbatched input", lambda m: m(t(5, 3), (t(2, 1, 4), t(2, 1, 4))), RuntimeError,
     r"For unbatched 2-D input, hx and cx should also be 2-D but got \(3-D, 3-D\) tensors"),
    ("hx dtype", lambda m: m(t(5, 2, 3), (t(2, 2, 4), t(2, 2, 4, **f64))), RuntimeError,
     r"hidden\[1\] dtype \(torch.float64\) does not match input dtype \(torch.float32\)"),
    ("hx not a pair", lambda m: m(t(5, 2, 3), t(2, 2, 4)), TypeError, r"hx must be a tuple \(h_0, c_0\)"),
    ("not a tensor", lambda m: m([[1.0, 2.0, 3.0]]), TypeError, "expected a Tensor or PackedSequence input, got list"),
    ("packed feature size", lambda m: m(pack_sequence([t(3, 5)])), RuntimeError,
     r"input.size\(-1\) must be equal to input_size. Expected 3, got 5"),
    ("packed h0 batch", lambda m: m(pack_sequence([t(3, 3), t(2, 3)]), (t(2, 1, 4), t(2, 1, 4))), RuntimeError,
     r"Expected hidden\[0\] size \(2, 2, 4\), got \[2, 1, 4\]"),
    ("parameters on another device", lambda m: m.to("meta")(t(5, 2, 3)), RuntimeError,
     "found input tensor at cpu and parameter tensor at meta"),
    # Malformed PackedSequences (made by hand, not by pack_*): reported as the PackedSequence's.
    ("packed batch_sizes increasing", lambda m: m(packed(t(3, 3), torch.tensor([1, 2]))), RuntimeError,
     r"the PackedSequence's batch_sizes must be positive and non-increasing, got \[1, 2\]"),
    ("packed rows past its data", lambda m: m(packed(t(3, 3), torch.tensor([2, 2]))), RuntimeError,
     r"the PackedSequence's data has 3 rows, but its batch_sizes add up to 4 \(\[2, 2\]\)"),
    ("packed rows short of its data", lambda m: m(packed(t(5, 3), torch.tensor([2, 2]))), RuntimeError,
     r"the PackedSequence's data has 5 rows, but its batch_sizes add up to 4"),
    ("packed float batch_sizes", lambda m: m(packed(t(3, 3), torch.tensor([2.0, 1.0]))), RuntimeError,
     r"the PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got 1-D torch.float32 on cpu"),
    ("packed int32 batch_sizes", lambda m: m(packed(t(3, 3), torch.tensor([2, 1], **i32))), RuntimeError,
     "the PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got 1-D torch.int32"),
    ("packed 2-D batch_sizes", lambda m: m(packed(t(3, 3), torch.tensor([[2, 1]]))), RuntimeError,
     "the PackedSequence's batch_sizes must be a 1-D int64 CPU tensor, got 2-D"),
    ("packed empty batch_sizes", lambda m: m(packed(t(0, 3), torch.tensor([], dtype=torch.long))), RuntimeError,
     "the PackedSequence's batch_sizes must not be empty"),
    ("packed zero in batch_sizes", lambda m: m(packed(t(2, 3), torch.tensor([2, 0]))), RuntimeError,
     r"the PackedSequence's batch_sizes must be positive and non-increasing, got \[2, 0\]"),
])

CELL_MODULE = cases("cell module", [
    ("3-D input", lambda c: c(t(2, 2, 3)), ValueError, "LSTMCell: Expected input to be 1D or 2D, got 3D instead"),
    ("3-D hx", lambda c: c(t(2, 3), (t(1, 2, 4), t(2, 4))), ValueError, r"Expected hx\[0\] to be 1D or 2D, got 3D"),
    ("feature size", lambda c: c(t(2, 5)), RuntimeError, "input has inconsistent input_size: got 5 expected 3"),
    ("batch", lambda c: c(t(2, 3), (t(3, 4), t(3, 4))), RuntimeError,
     "Input batch size 2 doesn't match hidden0 batch size 3"),
    ("hidden size", lambda c: c(t(2, 3), (t(2, 4), t(2, 6))), RuntimeError,
     "hidden1 has inconsistent hidden_size: got 6, expected 4"),
    ("dtype", lambda c: c(t(2, 3, **f64)), ValueError, r"input dtype \(torch.float64\) does not match weight dtype"),
])

# --- the ops, called directly -------------------------------------------------------------------
# Each call gets `o`, an implementation of the contract (cell_fwd, cell_bwd, layer_fwd,
# layer_bwd), and `z`, the tensor factory of the target (zeros on the CPU or the meta device).


def layer_bwd(o, z, *, w_hh=None, h0=None, c0=None, w_hr=None, batch_sizes=None, output=None, acts=None,
              cells=None, h_raw=None, grads=(None, None, None)):
    """lstm_layer_bwd with the arguments of a dense T=3, B=2, H=2 layer without projection,
    with some replaced."""
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return o.layer_bwd(*grads, pick(w_hh, z(8, 2)), pick(h0, z(2, 2)), pick(c0, z(2, 2)), w_hr, batch_sizes,
                       False, pick(output, z(3, 2, 2)), pick(acts, z(3, 2, 8)), pick(cells, z(3, 2, 2)),
                       pick(h_raw, z(0)))


def layer_fwd(o, z, *, x_proj=None, w_hh=None, h0=None, c0=None, w_hr=None, batch_sizes=None):
    """lstm_layer_fwd with the arguments of a dense T=3, B=2, H=2 layer, some replaced."""
    pick = lambda given, default: default if given is None else given  # noqa: E731
    return o.layer_fwd(pick(x_proj, z(3, 2, 8)), pick(w_hh, z(8, 2)), pick(h0, z(2, 2)), pick(c0, z(2, 2)),
                       w_hr, batch_sizes, False, False)


def bs(*sizes, dtype=torch.long):
    return torch.tensor(sizes, dtype=dtype)


OP = cases("op", [
    # cell forward
    ("cell gates width", lambda o, z: o.cell_fwd(z(2, 7), z(2, 2)), r"gates must have shape \[2, 8\], got \[2, 7\]"),
    ("cell dtype", lambda o, z: o.cell_fwd(z(2, 8), z(2, 2, **f64)),
     r"c_prev must have dtype (Float|torch\.float32) like gates, got (Double|torch\.float64)"),
    ("cell integer", lambda o, z: o.cell_fwd(z(2, 8, **i32), z(2, 2)),
     r"gates must be float32, float64, float16 or bfloat16, got (Int|torch\.int32)"),
    ("cell c_prev batch is c_prev's", lambda o, z: o.cell_fwd(z(2, 8), z(3, 2)),
     r"c_prev must have shape \[2, 2\], got \[3, 2\]"),
    ("cell c_prev 1-D", lambda o, z: o.cell_fwd(z(2, 8), z(2)), r"c_prev must be a 2-D tensor, got 1-D of shape \[2\]"),
    # cell backward: act is named act, not gates
    ("cell_bwd act width", lambda o, z: o.cell_bwd(z(2, 2), z(2, 2), z(2, 7), z(2, 2), z(2, 2)),
     r"act must have shape \[2, 8\], got \[2, 7\]"),
    ("cell_bwd act integer", lambda o, z: o.cell_bwd(z(2, 2), z(2, 2), z(2, 8, **i32), z(2, 2), z(2, 2)),
     r"act must be float32, float64, float16 or bfloat16, got torch.int32"),
    ("cell_bwd act 3-D", lambda o, z: o.cell_bwd(z(2, 2), z(2, 2), z(1, 2, 8), z(2, 2), z(2, 2)),
     r"act must be a 2-D tensor, got 3-D of shape \[1, 2, 8\]"),
    ("cell_bwd c_prev dtype", lambda o, z: o.cell_bwd(z(2, 2), z(2, 2), z(2, 8), z(2, 2, **f64), z(2, 2)),
     r"c_prev must have dtype torch.float32 like act, got torch.float64"),
    ("cell_bwd grad_h shape", lambda o, z: o.cell_bwd(z(2, 3), z(2, 2), z(2, 8), z(2, 2), z(2, 2)),
     r"grad_h must have shape \[2, 2\], got \[2, 3\]"),
    ("cell_bwd c dtype", lambda o, z: o.cell_bwd(z(2, 2), z(2, 2), z(2, 8), z(2, 2), z(2, 2, **f64)),
     r"c must have dtype torch.float32 like act, got torch.float64"),
    # layer forward
    ("layer w_hh", lambda o, z: layer_fwd(o, z, w_hh=z(8, 3)),
     r"without w_hr, w_hh must be \[4H, H\] = \[8, 2\], got \[8, 3\]"),
    ("layer h0", lambda o, z: layer_fwd(o, z, h0=z(3, 2)), r"h0 must have shape \[2, 2\], got \[3, 2\]"),
    ("layer x_proj", lambda o, z: layer_fwd(o, z, x_proj=z(3, 2, 9)), r"x_proj must have shape \[3, 2, 8\], got \[3, 2, 9\]"),
    ("layer w_hr", lambda o, z: layer_fwd(o, z, w_hh=z(8, 1), h0=z(2, 1), w_hr=z(2, 2)),
     r"w_hr must have shape \[1, 2\], got \[2, 2\]"),
    ("layer c0 batch is c0's", lambda o, z: layer_fwd(o, z, c0=z(3, 2)), r"c0 must have shape \[2, 2\], got \[3, 2\]"),
    ("layer c0 hidden is c0's", lambda o, z: layer_fwd(o, z, c0=z(2, 3)), r"c0 must have shape \[2, 2\], got \[2, 3\]"),
    ("layer w_hh rows", lambda o, z: layer_fwd(o, z, w_hh=z(7, 2)), r"w_hh must be \[4H, P\] with H > 0, got shape \[7, 2\]"),
    ("layer h0 dtype", lambda o, z: layer_fwd(o, z, h0=z(2, 2, **f64)),
     "h0 must have dtype torch.float32 like x_proj, got torch.float64"),
    ("layer w_hr 1-D", lambda o, z: layer_fwd(o, z, w_hh=z(8, 1), h0=z(2, 1), w_hr=z(2)),
     r"w_hr must be a 2-D tensor, got 1-D of shape \[2\]"),
    ("layer x_proj 2-D without batch_sizes", lambda o, z: layer_fwd(o, z, x_proj=z(6, 8)),
     r"x_proj must be \[T, B, 4H\] \(or \[N, 4H\] with batch_sizes\), got shape \[6, 8\]"),
    ("layer empty sequence", lambda o, z: layer_fwd(o, z, x_proj=z(0, 2, 8)),
     r"expected sequence length to be larger than 0, got x_proj of shape \[0, 2, 8\]"),
    ("layer packed x_proj 3-D", lambda o, z: layer_fwd(o, z, batch_sizes=bs(2, 1)),
     r"with batch_sizes, x_proj must be packed \[N, 4H\], got shape \[3, 2, 8\]"),
    ("batch_sizes increasing", lambda o, z: layer_fwd(o, z, x_proj=z(5, 8), batch_sizes=bs(2, 1, 2)),
     r"batch_sizes must be positive and non-increasing, got \[2, 1, 2\]", True),
    ("batch_sizes zero", lambda o, z: layer_fwd(o, z, x_proj=z(2, 8), batch_sizes=bs(2, 0)),
     r"batch_sizes must be positive and non-increasing, got \[2, 0\]", True),
    ("batch_sizes sum", lambda o, z: layer_fwd(o, z, x_proj=z(4, 8), batch_sizes=bs(2, 1)),
     r"x_proj must have shape \[3, 8\], got \[4, 8\]", True),
    ("batch_sizes vs h0", lambda o, z: layer_fwd(o, z, x_proj=z(4, 8), batch_sizes=bs(3, 1)),
     r"batch_sizes\[0\] \(3\) must equal the batch size of h0 and c0 \(2\)", True),
    ("packed h0 alone", lambda o, z: layer_fwd(o, z, x_proj=z(3, 8), h0=z(3, 2), batch_sizes=bs(2, 1)),
     r"h0 must have shape \[2, 2\], got \[3, 2\]"),
    ("batch_sizes dtype", lambda o, z: layer_fwd(o, z, x_proj=z(3, 8), batch_sizes=bs(2.0, 1.0, dtype=torch.float32)),
     "batch_sizes must be a 1-D int64 CPU tensor, got 1-D torch.float32 on cpu"),
    ("batch_sizes empty", lambda o, z: layer_fwd(o, z, x_proj=z(0, 8), batch_sizes=bs()),
     "batch_sizes must not be empty"),
    # layer backward: acts is named acts, not x_proj
    ("bwd without saved activations", lambda o, z: layer_bwd(o, z, cells=z(0)),
     r"was the forward run with save_for_backward=True"),
    ("bwd acts empty", lambda o, z: layer_bwd(o, z, acts=z(0), cells=z(0)),
     r"acts is empty \(was the forward run with save_for_backward=True\?\)"),
    ("bwd h_raw with a projection", lambda o, z: layer_bwd(o, z, w_hh=z(8, 1), h0=z(2, 1), w_hr=z(1, 2),
                                                          output=z(3, 2, 1)),
     r"with w_hr, h_raw must have shape \[3, 2, 2\] \(lstm_layer_fwd's h_raw\), got \[0\]"),
    ("bwd h_raw without a projection", lambda o, z: layer_bwd(o, z, h_raw=z(3, 2, 2)),
     r"without w_hr, h_raw must be empty \(as lstm_layer_fwd returns it\), got shape \[3, 2, 2\]"),
    ("bwd acts shape is acts'", lambda o, z: layer_bwd(o, z, acts=z(3, 2, 9)),
     r"acts must have shape \[3, 2, 8\], got \[3, 2, 9\]"),
    ("bwd acts integer", lambda o, z: layer_bwd(o, z, acts=z(3, 2, 8, **i32)),
     "acts must be float32, float64, float16 or bfloat16, got torch.int32"),
    ("bwd acts 2-D", lambda o, z: layer_bwd(o, z, acts=z(6, 8)),
     r"acts must be \[T, B, 4H\] \(or \[N, 4H\] with batch_sizes\), got shape \[6, 8\]"),
    ("bwd w_hh dtype", lambda o, z: layer_bwd(o, z, w_hh=z(8, 2, **f64)),
     "w_hh must have dtype torch.float32 like acts, got torch.float64"),
    ("bwd c0 batch", lambda o, z: layer_bwd(o, z, c0=z(3, 2)), r"c0 must have shape \[2, 2\], got \[3, 2\]"),
    ("bwd output shape", lambda o, z: layer_bwd(o, z, output=z(3, 2, 3)),
     r"output must have shape \[3, 2, 2\], got \[3, 2, 3\]"),
    ("bwd cells dtype", lambda o, z: layer_bwd(o, z, cells=z(3, 2, 2, **f64)),
     "cells must have dtype torch.float32 like acts, got torch.float64"),
    ("bwd grad_output shape", lambda o, z: layer_bwd(o, z, grads=(z(3, 1, 2), None, None)),
     r"grad_output must have shape \[3, 2, 2\], got \[3, 1, 2\]"),
    ("bwd grad_h_n shape", lambda o, z: layer_bwd(o, z, grads=(None, z(2, 3), None)),
     r"grad_h_n must have shape \[2, 2\], got \[2, 3\]"),
    ("bwd grad_c_n dtype", lambda o, z: layer_bwd(o, z, grads=(None, None, z(2, 2, **f64))),
     "grad_c_n must have dtype torch.float32 like acts, got torch.float64"),
    ("bwd packed acts rows", lambda o, z: layer_bwd(o, z, batch_sizes=bs(2, 1), acts=z(4, 8), output=z(4, 2),
                                                    cells=z(4, 2)),
     r"acts must have shape \[3, 8\], got \[4, 8\]", True),
], RuntimeError)

# --- the command line and checkpoint files -----------------------------------------------------
# Each call gets `run`, a folder holding a finished tiny run (a fresh copy per test), and
# `corpus`, its text file; it returns the argv of `fusedlstm`. `error` is the exit status.

TRAIN = ["train", "--embed", "8", "--hidden", "16", "--layers", "1", "--seq-len", "8", "--batch-size", "4",
         "--device", "cpu", "--max-steps", "6", "--eval-interval", "3"]


def train_args(corpus, *extra):
    return [*TRAIN, "--text", str(corpus), *extra]


def sample_args(checkpoint, *extra):
    return ["sample", "--checkpoint", str(checkpoint), "--length", "5", "--device", "cpu", *extra]


CLI = cases("cli", [
    ("--out is a file", lambda run, corpus: train_args(corpus, "--out", str(corpus)), 1,
     r"--out '.*words.txt' is a file, not a folder"),
    ("--out cannot be created", lambda run, corpus: train_args(corpus, "--out", f"{corpus}/run"), 1,
     r"cannot write the run folder '.*words.txt/run': Not a directory"),
    ("train --backend fortran", lambda run, corpus: train_args(corpus, "--out", f"{run}x", "--backend", "fortran"), 2,
     r"argument --backend: backend must be one of \['auto', .*\], got 'fortran'"),
    ("sample --backend fortran", lambda run, corpus: sample_args(run, "--backend", "fortran"), 2,
     r"argument --backend: backend must be one of .*got 'fortran'"),
    ("train --backend cuda on a CPU", lambda run, corpus: train_args(corpus, "--out", f"{run}x", "--backend", "cuda"), 1,
     r"backend 'cuda' cannot run on cpu here: the cuda backend runs on CUDA tensors, not cpu; pass --backend "
     r"with one that can: cpu"),
    ("sample --backend cuda on a CPU", lambda run, corpus: sample_args(run, "--backend", "cuda"), 1,
     r"backend 'cuda' cannot run on cpu here"),
    ("train --backend triton without the interpreter",
     lambda run, corpus: train_args(corpus, "--out", f"{run}x", "--backend", "triton"), 1,
     r"backend 'triton' cannot run on cpu here: .*set TRITON_INTERPRET=1"),
    ("sample --device cuda without a GPU", lambda run, corpus: ["sample", "--checkpoint", str(run), "--device", "cuda"],
     1, "--device cuda was asked for, but no CUDA GPU is visible"),
    ("train into a run", lambda run, corpus: train_args(corpus, "--out", str(run)), 1,
     r"already holds a run \(best.pt, last.pt, metrics.jsonl\): pass --resume to continue it, --overwrite"),
    ("--resume and --overwrite", lambda run, corpus: train_args(corpus, "--out", str(run), "--resume", "--overwrite"),
     1, "--resume continues the run in --out and --overwrite deletes it: give one of them"),
    ("--resume without --out", lambda run, corpus: ["train", "--resume", "--max-steps", "1"], 1,
     "--resume needs --out RUN_DIR"),
    ("--resume of nothing", lambda run, corpus: train_args(corpus, "--out", f"{run}-absent", "--resume"), 1,
     r"nothing to resume: no last.pt or best.pt in '.*-absent'"),
    ("--resume changing the model", lambda run, corpus: train_args(corpus, "--out", str(run), "--resume",
                                                                   "--embed", "12"), 1,
     r"--resume continues the saved run, whose settings cannot change: embed_dim \(run: 8, given: 12\)"),
    ("missing corpus", lambda run, corpus: train_args(f"{corpus}.missing", "--out", f"{run}x"), 1,
     "cannot read the corpus"),
    ("negative learning rate", lambda run, corpus: train_args(corpus, "--out", f"{run}x", "--lr", "-1"), 1,
     "lr must be positive, got -1.0"),
    ("--hidden 0", lambda run, corpus: train_args(corpus, "--out", f"{run}x", "--hidden", "0"), 2,
     "hidden sizes must be positive, got '0'"),
    ("sample of no checkpoint", lambda run, corpus: sample_args(f"{run}/none.pt"), 1,
     r"no checkpoint at '.*none.pt': give a run folder or a .pt file"),
    ("sample of a folder without one", lambda run, corpus: sample_args(corpus.parent), 1,
     r"no checkpoint in '.*': expected best.pt or last.pt there"),
    ("negative temperature", lambda run, corpus: sample_args(run, "--temperature", "-1"), 1,
     "temperature must be >= 0"),
    ("top-k 0", lambda run, corpus: sample_args(run, "--top-k", "0"), 1, "top-k must be at least 1, got 0"),
    ("unknown prime characters", lambda run, corpus: sample_args(run, "--prime", "\u00e9"), 1,
     "the priming text has 1 character\\(s\\) the model never saw"),
])


def damaged(name, file_name, change, use, message):
    """A case: `use` ("sample" or "resume") of a copy of the run whose `file_name` was
    changed by change(path)."""

    def call(run, corpus):
        change(run / file_name)
        if use == "sample":
            return sample_args(run / file_name)
        return ["train", "--out", str(run), "--resume", "--max-steps", "9"]

    return Case(f"{use} {name}", "checkpoint", call, 1, message)


def write_bytes(data):
    return lambda path: path.write_bytes(data)


def edit_checkpoint(edit):
    def change(path):
        checkpoint = torch.load(path, weights_only=True)
        edit(checkpoint)
        torch.save(checkpoint, path)

    return change


def other_model_optimizer(checkpoint):
    checkpoint["optimizer"] = torch.optim.Adam(nn.Linear(2, 2).parameters()).state_dict()


CHECKPOINT = [damaged(*row) for row in [
    ("garbage bytes", ckpt.BEST, write_bytes(os.urandom(64)), "sample",
     r"the checkpoint '.*best.pt' is damaged: it is not a PyTorch checkpoint file"),
    ("garbage bytes", ckpt.LAST, write_bytes(b"\x00garbage" * 20), "resume",
     r"the checkpoint '.*last.pt' is damaged: it is not a PyTorch checkpoint file"),
    ("empty file", ckpt.BEST, write_bytes(b""), "sample", r"'.*best.pt' is damaged"),
    ("truncated", ckpt.LAST, lambda p: p.write_bytes(p.read_bytes()[:2000]), "resume", r"'.*last.pt' is damaged"),
    ("no config", ckpt.BEST, edit_checkpoint(lambda c: c.pop("config")), "sample",
     r"the checkpoint '.*best.pt' is incomplete: it has no 'config'"),
    ("no optimizer", ckpt.LAST, edit_checkpoint(lambda c: c.pop("optimizer")), "resume",
     r"the checkpoint '.*last.pt' is incomplete: it has no 'optimizer'"),
    ("no held-out text", ckpt.BEST, edit_checkpoint(lambda c: c.pop("prime_pool")), "sample",
     r"it has no 'prime_pool'"),
    ("config of another model", ckpt.BEST, edit_checkpoint(lambda c: c["config"].update(hidden_sizes=[32])),
     "sample", r"'.*best.pt' is damaged or inconsistent: its configuration, vocabulary and weights cannot be "
               r"used \(Error\(s\) in loading state_dict for CharLM: size mismatch"),
    ("config of another model", ckpt.LAST, edit_checkpoint(lambda c: c["config"].update(embed_dim=4)),
     "resume", r"'.*last.pt' is damaged or inconsistent: its weights cannot be used \(.*size mismatch"),
    ("vocabulary of another model", ckpt.BEST, edit_checkpoint(lambda c: c.update(vocab=c["vocab"][1:])),
     "sample", r"its configuration, vocabulary and weights cannot be used \(.*size mismatch for embed.weight"),
    ("invalid config", ckpt.BEST, edit_checkpoint(lambda c: c["config"].update(hidden_sizes=[-1])), "sample",
     r"its configuration, vocabulary and weights cannot be used \(hidden sizes must be positive"),
    ("invalid config", ckpt.LAST, edit_checkpoint(lambda c: c["config"].update(dropout="x")), "resume",
     r"'.*last.pt' is damaged or inconsistent: its configuration, vocabulary or corpus record cannot be used"),
    ("repeated characters in the vocabulary", ckpt.LAST, edit_checkpoint(lambda c: c.update(vocab=c["vocab"] * 2)),
     "resume", r"its configuration, vocabulary or corpus record cannot be used \(vocabulary characters must be "
               r"distinct\)"),
    ("no corpus record", ckpt.LAST, edit_checkpoint(lambda c: c.update(corpus=None)), "resume",
     r"its configuration, vocabulary or corpus record cannot be used \('NoneType' object is not subscriptable\)"),
    ("optimizer of another model", ckpt.LAST, edit_checkpoint(other_model_optimizer), "resume",
     r"its optimizer state cannot be used"),
    ("carried state of another model", ckpt.LAST,
     edit_checkpoint(lambda c: c.update(train_state=[(torch.zeros(1, 4, 3), torch.zeros(1, 4, 3))])), "resume",
     r"its carried stream state cannot be used"),
    ("another format", ckpt.BEST, edit_checkpoint(lambda c: c.update(format="other/1")), "sample",
     r"'.*best.pt' is not a fusedlstm char-LM checkpoint \(format fusedlstm.charlm/1\)"),
    ("Python objects", ckpt.BEST, lambda p: torch.save({"a": SimpleNamespace()}, p), "sample",
     r"'.*best.pt' is not a fusedlstm char-LM checkpoint: it holds Python objects that are not loaded"),
]]

BAD_INPUTS = CONSTRUCTOR + MODULE + CELL_MODULE + OP + CLI + CHECKPOINT


# --- the targets ----------------------------------------------------------------------------------

def zeros_on(device):
    return lambda *shape, dtype=torch.float32: torch.zeros(*shape, dtype=dtype, device=device)


def contract(target):
    """(implementation of the contract, tensor factory, context) of an op target; skips if unusable."""
    zeros = zeros_on("cpu")
    if target == "cuda":  # the CUDA kernels' checks (checks.h)
        skip_unless_usable("cuda", "cuda")
        return ops.cpp, zeros_on("cuda"), None
    if target == "triton-cuda":  # the Triton ops on the GPU
        skip_unless_usable("triton", "cuda")
        return backends.BACKENDS["triton"].implementation(), zeros_on("cuda"), None
    if target == "reference":
        return (SimpleNamespace(cell_fwd=reference.lstm_cell_fwd, cell_bwd=reference.lstm_cell_bwd,
                                layer_fwd=reference.lstm_layer_fwd, layer_bwd=reference.lstm_layer_bwd),
                zeros, None)
    if target == "triton":
        skip_unless_usable("triton", "cpu")
        return backends.BACKENDS["triton"].implementation(), zeros, None
    if ops.cpp is None:
        pytest.skip("fusedlstm._C is not built")
    if target == "meta":  # the C++ ops' meta kernels are the fake rules; batch_sizes stays on the CPU
        return ops.cpp, zeros_on("meta"), None
    if target == "fake":
        return ops.cpp, zeros, FakeTensorMode
    return ops.cpp, zeros, None  # "cpu": the C++ kernels' own checks (checks.h)


OP_TARGETS = ("cpu", "triton", "reference", "meta", "fake", "cuda", "triton-cuda")
GPU_TARGETS = ("cuda", "triton-cuda")
MODULE_TARGETS = ("cpu", "reference", "triton")


def targets(case):
    return {"constructor": ("-",), "module": MODULE_TARGETS, "cell module": MODULE_TARGETS, "op": OP_TARGETS,
            "cli": ("-",), "checkpoint": ("-",)}[case.kind]


def op_message(case, target):
    implementation, zeros, mode = contract(target)
    if mode is not None and case.needs_values:
        pytest.skip("the fault is in batch_sizes' values, which fake tensors do not have")
    with mode() if mode is not None else torch.device("cpu"):
        with pytest.raises(RuntimeError) as raised:
            case.call(implementation, zeros)
    return str(raised.value)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """(run folder, corpus) of a finished 6-step run, made once."""
    root = tmp_path_factory.mktemp("runs")
    corpus = root / "words.txt"
    make_corpus(corpus, chars=4000)
    run = root / "run"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(tiny_config(corpus, run, embed_dim=8, hidden_sizes=(16,), seq_len=8, batch_size=4, max_steps=6,
                          eval_interval=3, warmup_steps=2, eval_streams=4), progress=False)
    finally:
        torch.set_num_threads(threads)
    return run, corpus


def run_cli(argv, capsys):
    """(exit status, stderr) of `fusedlstm argv` in this process."""
    try:
        status = cli.main(argv)
    except SystemExit as exit:  # argparse's usage errors
        status = exit.code
    return status, capsys.readouterr().err


@pytest.mark.parametrize("case,target", [
    pytest.param(c, target, id=f"{c.kind}: {c.id} [{target}]",
                 marks=[pytest.mark.cuda] if target in GPU_TARGETS else [])
    for c in BAD_INPUTS for target in targets(c)])
def test_bad_input(case, target, request, monkeypatch):
    if case.kind == "constructor":
        kwargs = dict(case.call)
        cls = FusedLSTMCell if kwargs.pop("cell", False) else FusedLSTM
        with pytest.raises(case.error, match=case.message):
            cls(**kwargs)
    elif case.kind in ("module", "cell module"):
        skip_unless_usable(target, "cpu")
        module = FusedLSTM(3, 4, num_layers=2, backend=target) if case.kind == "module" else \
            FusedLSTMCell(3, 4, backend=target)
        with pytest.raises(case.error, match=case.message):
            case.call(module)
    elif case.kind == "op":
        assert re.search(case.message, op_message(case, target))
    else:
        if torch.cuda.is_available() and "cuda" in case.id:
            pytest.skip("this machine has a GPU")
        if "without the interpreter" in case.id:
            monkeypatch.delenv("TRITON_INTERPRET", raising=False)
        source, corpus = request.getfixturevalue("finished_run")
        run = request.getfixturevalue("tmp_path") / "run"
        shutil.copytree(source, run)
        request.getfixturevalue("one_thread")
        capsys = request.getfixturevalue("capsys")
        status, err = run_cli(case.call(run, corpus), capsys)
        assert status == case.error, err
        assert "Traceback" not in err
        last = err.rstrip("\n").splitlines()[-1]
        assert re.match(r"fusedlstm (train|sample): error: ", last), err
        assert re.search(case.message, last), last


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in OP])
def test_every_implementation_of_an_op_says_the_same(case):
    """The C++ op, the Triton op, the reference and the fake rule (on meta and on fake
    tensors) reject each bad argument with the same message, word for word."""
    messages = {}
    for target in OP_TARGETS:
        try:
            messages[target] = op_message(case, target)
        except pytest.skip.Exception:
            continue
    assert len(messages) >= 2, messages
    assert len(set(messages.values())) == 1, messages


def test_the_table_covers_every_kind():
    counts = {kind: sum(c.kind == kind for c in BAD_INPUTS)
              for kind in ("constructor", "module", "cell module", "op", "cli", "checkpoint")}
    assert all(counts.values()), counts
    assert len({(c.kind, c.id) for c in BAD_INPUTS}) == len(BAD_INPUTS)  # unique test ids


def test_constructor_errors_match_nn_lstm_types():
    for case in CONSTRUCTOR:
        kwargs = case.call
        if "backend" in kwargs or "cell" in kwargs or isinstance(kwargs.get("num_layers"), float):
            continue  # no nn.LSTM counterpart / nn.LSTM's own TypeError text differs
        with pytest.raises(case.error):
            nn.LSTM(**kwargs)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MODULE[:12]])
def test_nn_lstm_raises_the_same_type(case):
    if case.id == "hx dtype":
        pytest.skip("nn.LSTM raises an unrelated backend error for a mixed-dtype state")
    torch.manual_seed(0)
    with pytest.raises(case.error):
        case.call(nn.LSTM(3, 4, num_layers=2))


def test_dropout_with_one_layer_warns():
    with pytest.warns(UserWarning, match="non-zero dropout expects num_layers greater than 1"):
        FusedLSTM(3, 4, dropout=0.5)


def test_unknown_backend_for_device_names_available_ones():
    lstm = FusedLSTM(3, 4, backend="cuda")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(RuntimeError, match=r"backend 'cuda' is not available for cpu tensors .*available: \["):
        lstm(torch.zeros(5, 2, 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU to place tensors on two devices")
@pytest.mark.cuda
def test_device_mismatch():
    lstm = FusedLSTM(3, 4, backend="reference")
    with pytest.raises(RuntimeError, match="Input and parameter tensors are not at the same device"):
        lstm(torch.zeros(5, 2, 3, device="cuda"))
    with pytest.raises(RuntimeError, match="Input and hidden tensors are not at the same device"):
        lstm(torch.zeros(5, 2, 3), (t(1, 2, 4).cuda(), t(1, 2, 4).cuda()))


# --- meta tensors and zero sizes -------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "cpu", "cuda", "triton", "reference"])
@pytest.mark.parametrize("kind", ["padded", "packed", "unbatched"])
def test_meta_tensors_give_nn_lstms_shapes(backend, kind):
    """Shape inference on the meta device, as nn.LSTM does it, whatever the backend."""
    config = dict(num_layers=2, bidirectional=True, proj_size=3, batch_first=True)
    fused = FusedLSTM(4, 8, **config, device="meta", backend=backend)
    plain = nn.LSTM(4, 8, **config, device="meta")
    x = torch.randn(3, 5, 4, device="meta")
    if kind == "packed":
        x = nn.utils.rnn.pack_padded_sequence(x, torch.tensor([5, 2, 4]), batch_first=True, enforce_sorted=False)
    elif kind == "unbatched":
        x = x[0]
    data = lambda out: out.data if kind == "packed" else out  # noqa: E731
    (out, (h, c)), (out_nn, (h_nn, c_nn)) = fused(x), plain(x)
    for ours, theirs in ((data(out), data(out_nn)), (h, h_nn), (c, c_nn)):
        assert ours.device.type == "meta" and ours.shape == theirs.shape
    assert data(fused(x, (h, c))[0]).shape == data(out).shape  # with a given state


@pytest.mark.parametrize("backend", ["auto", "cpu", "triton", "reference"])
def test_meta_tensors_through_fused_lstm_cell(backend):
    cell = FusedLSTMCell(4, 8, device="meta", backend=backend)
    h, c = cell(torch.randn(3, 4, device="meta"))
    assert h.device.type == c.device.type == "meta" and h.shape == c.shape == (3, 8)
    loss = cell(torch.randn(3, 4, device="meta"), (h, c))[0].sum()
    loss.backward()
    assert cell.weight_hh.grad.shape == (32, 8)


@pytest.mark.parametrize("backend", ["cpu", "triton", "reference"])
def test_zero_hidden_units_and_zero_width_projection(backend):
    """A cell step of zero width and a layer whose projection has size 0: empty results
    and gradients of the right shapes (the C++ ops and nn.LSTM's own ops allow both)."""
    skip_unless_usable(backend, "cpu")
    implementation = backends.BACKENDS[backend]
    gates, c_prev = (torch.randn(3, 0, dtype=torch.float64, requires_grad=True) for _ in range(2))
    h, c = implementation.cell(gates, c_prev)
    (h.sum() + c.sum()).backward()
    assert h.shape == c.shape == (3, 0) and gates.grad.shape == (3, 0)
    x_proj, w_hh, h0, c0, w_hr = (torch.randn(*shape, dtype=torch.float64, requires_grad=True)
                                  for shape in ((4, 2, 12), (12, 0), (2, 0), (2, 3), (0, 3)))
    out, h_n, c_n = implementation.layer(x_proj, w_hh, h0, c0, w_hr, None, False)
    assert out.shape == (4, 2, 0) and h_n.shape == (2, 0)
    c_n.sum().backward()
    expected = reference.lstm_layer_fwd(x_proj.detach(), w_hh.detach(), h0.detach(), c0.detach(), w_hr.detach())[2]
    torch.testing.assert_close(c_n, expected, rtol=1e-10, atol=1e-10)
    assert x_proj.grad.shape == x_proj.shape and w_hr.grad.shape == (0, 3)


# --- run folders ---------------------------------------------------------------------------------

@pytest.fixture
def run_copy(finished_run, tmp_path, monkeypatch, one_thread):
    """(a copy of the finished run, the corpus); the test runs in tmp_path, one CPU thread."""
    source, corpus = finished_run
    shutil.copytree(source, tmp_path / "run")
    monkeypatch.chdir(tmp_path)
    return tmp_path / "run", corpus


def metrics_steps(run):
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("spelling", ["run/", "./run", "absolute", "moved"])
def test_resume_from_any_spelling_of_the_run_folder(run_copy, spelling, capsys):
    run, corpus = run_copy
    if spelling == "moved":
        run = run.rename(run.with_name("renamed"))
    out = str(run.resolve()) if spelling in ("absolute", "moved") else spelling
    status, err = run_cli(train_args(corpus, "--out", out, "--resume", "--max-steps", "9"), capsys)
    assert status == 0, err
    assert ckpt.load(run / ckpt.LAST)["step"] == 9
    assert metrics_steps(run) == [3, 6, 9]


def test_a_run_killed_before_its_first_checkpoint_starts_over(run_copy, capsys):
    """metrics.jsonl and config.json without a checkpoint (a kill between the first
    evaluation's two writes): plain train points to --resume and --overwrite, --resume
    starts the run over from step 0 with its saved configuration."""
    run, corpus = run_copy
    for name in (ckpt.BEST, ckpt.LAST):
        (run / name).unlink()
    status, err = run_cli(train_args(corpus, "--out", str(run)), capsys)
    assert status == 1 and "stopped before its first checkpoint (metrics.jsonl): pass --resume to start it " \
                            "over, --overwrite to replace it" in err
    status, err = run_cli(["train", "--out", str(run), "--resume", "--max-steps", "3"], capsys)
    assert status == 0, err
    assert "has no checkpoint (the run stopped before its first): starting it over from step 0" in err
    assert ckpt.load(run / ckpt.LAST)["step"] == 3 and metrics_steps(run) == [3]
    assert ckpt.load(run / ckpt.LAST)["config"]["hidden_sizes"] == [16]  # from its config.json


def test_overwrite_replaces_the_run_and_keeps_other_files(run_copy, capsys):
    run, corpus = run_copy
    (run / "notes.txt").write_text("mine")
    status, err = run_cli(train_args(corpus, "--out", str(run), "--overwrite", "--max-steps", "3"), capsys)
    assert status == 0, err
    assert metrics_steps(run) == [3] and ckpt.load(run / ckpt.LAST)["step"] == 3
    assert (run / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("damaged", ['{"step": 9, "train_lo', "garbage\x00\xff", "[1, 2]"])
def test_a_damaged_last_metrics_line_does_not_stop_resume(run_copy, damaged, capsys):
    run, corpus = run_copy
    with open(run / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write(damaged)
    status, err = run_cli(train_args(corpus, "--out", str(run), "--resume", "--max-steps", "9"), capsys)
    assert status == 0, err
    assert f"left out 1 damaged line(s) of {run / 'metrics.jsonl'}" in err
    assert metrics_steps(run) == [3, 6, 9]


@pytest.mark.parametrize("resuming", [False, True], ids=["new run", "resumed run"])
def test_temporary_files_of_a_killed_run_are_removed_at_start(run_copy, resuming, capsys):
    run, corpus = run_copy
    if not resuming:
        for name in os.listdir(run):
            (run / name).unlink()
    leftovers = [".last.pt.0123456789ab.tmp", ".best.pt.ba9876543210.tmp", "metrics.jsonl.tmp", "loss.tmp.png"]
    for name in leftovers:
        (run / name).write_bytes(b"partial")
    extra = ("--resume", "--max-steps", "9") if resuming else ()
    status, err = run_cli(train_args(corpus, "--out", str(run), *extra), capsys)
    assert status == 0, err
    assert not any((run / name).exists() for name in leftovers)


def test_api_errors_are_charlm_errors(finished_run):
    run, _ = finished_run
    with pytest.raises(CharLMError, match="nothing to resume"):
        resume(run.parent / "absent")
    with pytest.raises(CharLMError, match="expected best.pt or last.pt"):
        ckpt.load(run.parent)


@pytest.mark.slow
def test_ctrl_c_stops_sample_cleanly(finished_run):
    """SIGINT while `fusedlstm sample` prints: exit 130, what was printed so far kept and
    its line ended, nothing on stderr."""
    run, _ = finished_run
    process = subprocess.Popen([python(), "-m", "fusedlstm", "sample", "--checkpoint", str(run), "--length",
                                "1000000", "--device", "cpu", "--seed", "1"], env=subprocess_env(),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = process.stdout.read(200)  # it is generating now
    process.send_signal(signal.SIGINT)
    rest, err = process.communicate(timeout=60)
    assert process.returncode == 130, err
    assert err == b""
    assert len(first) == 200 and (first + rest).endswith(b"\n")
