"""The Triton backend: the op contract (csrc/ops.cpp) as Triton kernels, a
second implementation independent of the C++/CUDA one.

    gate_math.py   the gate formulas as @triton.jit functions
    cell.py        fused cell forward / backward kernels (one step)
    layer.py       a layer, one step at a time: addmm + cell kernel per step
    persistent.py  a layer in one launch: W_hh on chip, all steps in a loop
    steps.py       step layout on the device (packed <-> padded), weight gradients
    launch.py      wrap_triton across torch versions and the interpreter
    ops.py         the four ops as torch.library.triton_op, with autograd
    budget.py      ptxas register / shared-memory report of the persistent kernel

Importing this package imports triton; fusedlstm.backends does so only when
the "triton" backend is asked for. With TRITON_INTERPRET=1 set before the
import, the kernels run on CPU tensors through Triton's interpreter (how the
tests run without a GPU).
"""
