// The op contract of fusedlstm, declared once. Every backend (CPU and CUDA
// here, Triton and the pure-PyTorch reference in Python) implements exactly
// these signatures; autograd and fake-tensor rules live in fusedlstm/ops.py.
//
// Shapes: B batch, H hidden size, P = H_out output size (proj_size, or H when
// there is no projection), T steps. A layer's per-step tensors are either
// dense, [T, B, *], or packed, [N, *] with N = sum(batch_sizes): rows of step
// t are contiguous and only the first batch_sizes[t] sequences take part.
#include <torch/library.h>

TORCH_LIBRARY(fusedlstm, m) {
  // Where every step of one layer and direction lives: one row (offset, rows,
  // continuing, prev_offset) per step, in processing order, as defined in
  // csrc/include/fusedlstm/layer_plan.h; built on the host for every backend.
  //   batch_sizes: int64 [T] on the CPU (packed input) or None (dense, B rows
  //   per step); reverse: the order runs from the last step to the first
  // -> int64 [T, 4] CPU tensor
  m.def("layer_plan(Tensor? batch_sizes, SymInt T, SymInt B, bool reverse) -> Tensor");

  // One step. gates: [B, 4H] pre-activations (x W_ih^T + b_ih + h W_hh^T +
  // b_hh, order i, f, g, o); c_prev: [B, H].
  // -> h: [B, H], c: [B, H], act: [B, 4H] post-activation gates.
  m.def("lstm_cell_fwd(Tensor gates, Tensor c_prev) -> (Tensor h, Tensor c, Tensor act)");
  // -> grad_gates: [B, 4H] (w.r.t. pre-activations), grad_c_prev: [B, H].
  m.def(
      "lstm_cell_bwd(Tensor grad_h, Tensor grad_c, Tensor act, Tensor c_prev, Tensor c)"
      " -> (Tensor grad_gates, Tensor grad_c_prev)");

  // The whole recurrence of one layer and direction.
  //   x_proj: [T, B, 4H] or packed [N, 4H]: x W_ih^T + b_ih + b_hh, all steps
  //   w_hh: [4H, P]; h0: [B, P]; c0: [B, H]; w_hr: [P, H] or None
  //   batch_sizes: int64 [T] on the CPU (packed input) or None
  //   reverse: run from the last step to the first
  //   save_for_backward: keep acts, cells and h_raw (else they come back empty)
  // -> output: [T, B, P] or [N, P]; h_n: [B, P]; c_n: [B, H];
  //    acts: [T, B, 4H] or [N, 4H] post-activation gates; cells: c of every
  //    step, [T, B, H] or [N, H]; h_raw: with w_hr, o * tanh(c) of every step
  //    (the projection's input), [T, B, H] or [N, H], else empty. h_raw is
  //    saved, not recomputed from acts and cells in the backward: in float16
  //    that recomputation rounds o and c first, and grad_w_hr then had 2.0 to
  //    3.1 times cuDNN's error (H200, 2026-11-28).
  m.def(
      "lstm_layer_fwd(Tensor x_proj, Tensor w_hh, Tensor h0, Tensor c0, Tensor? w_hr,"
      " Tensor? batch_sizes, bool reverse, bool save_for_backward)"
      " -> (Tensor output, Tensor h_n, Tensor c_n, Tensor acts, Tensor cells, Tensor h_raw)");
  // Gradients of the layer; a None grad_* is zero. Weight gradients are
  // single GEMMs over all steps. grad_w_hr is empty when w_hr is None.
  m.def(
      "lstm_layer_bwd(Tensor? grad_output, Tensor? grad_h_n, Tensor? grad_c_n, Tensor w_hh,"
      " Tensor h0, Tensor c0, Tensor? w_hr, Tensor? batch_sizes, bool reverse, Tensor output,"
      " Tensor acts, Tensor cells, Tensor h_raw)"
      " -> (Tensor grad_x_proj, Tensor grad_w_hh, Tensor grad_h0, Tensor grad_c0, Tensor grad_w_hr)");
}
