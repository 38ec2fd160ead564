"""The Triton backend: the op contract (csrc/ops.cpp) as Triton kernels, a
second implementation independent of the C++/CUDA one.

    gate_math.py   the gate formulas as @triton.jit functions
    cell.py        fused cell forward / backward kernels (one step)
    layer.py       a layer, one step at a time: addmm + cell kernel per step
    persistent.py  a layer in one launch: W_hh on chip, all steps in a loop
    streamed.py    a layer in one launch for larger sizes: W_hh read from L2 every step
    one_launch.py  the launcher of the persistent and streamed kernels
    steps.py       the layer plan on the device (plan_entry), packed <-> padded
                   layouts, weight gradients
    launch.py      wrap_triton across torch versions and the interpreter, the
                   device guard of every launch
    ops.py         the four ops as torch.library.triton_op, with autograd
    budget.py      ptxas register / shared-memory report of the kernels

The layer ops read the layer plan that fusedlstm._C builds (fusedlstm.plan).
Importing this package imports triton; fusedlstm.backends does so only when
the "triton" backend is asked for. With TRITON_INTERPRET=1 set before the
import, the kernels run on CPU tensors through Triton's interpreter (how the
tests run without a GPU).
"""
