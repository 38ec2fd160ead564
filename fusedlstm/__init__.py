"""fusedlstm: fused LSTM kernels (C++ CPU, CUDA C++, Triton) behind a drop-in
torch.nn.LSTM, and a character-level language model built on them.

    >>> import torch, fusedlstm
    >>> lstm = fusedlstm.FusedLSTM(64, 256, num_layers=2, batch_first=True)
    >>> out, (h_n, c_n) = lstm(torch.randn(8, 100, 64))
"""

import torch as _torch

from .backends import available_backends
from .cell import FusedLSTMCell
from .lstm import FusedLSTM
from .ops import double_backward

# Whole models holding these modules load with torch.load's default
# weights_only=True once fusedlstm is imported (their pickles name only these
# classes besides torch's own).
_torch.serialization.add_safe_globals([FusedLSTM, FusedLSTMCell])

__all__ = ["FusedLSTM", "FusedLSTMCell", "available_backends", "double_backward"]
__version__ = "0.1.0"
