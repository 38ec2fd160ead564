// The CUDA backend of the op contract.
#include <torch/library.h>

#include "lstm_cuda.h"

TORCH_LIBRARY_IMPL(fusedlstm, CUDA, m) {
  m.impl("lstm_cell_fwd", &fusedlstm::cuda::lstm_cell_fwd_cuda);
  m.impl("lstm_cell_bwd", &fusedlstm::cuda::lstm_cell_bwd_cuda);
  m.impl("lstm_cell_step", &fusedlstm::cuda::lstm_cell_step_cuda);
  m.impl("lstm_layer_fwd", &fusedlstm::cuda::lstm_layer_fwd_cuda);
  m.impl("lstm_layer_bwd", &fusedlstm::cuda::lstm_layer_bwd_cuda);
}
