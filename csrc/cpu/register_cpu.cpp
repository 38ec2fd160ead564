// The CPU backend of the op contract.
#include <torch/library.h>

#include "lstm_cpu.h"

TORCH_LIBRARY_IMPL(fusedlstm, CPU, m) {
  m.impl("lstm_cell_fwd", &fusedlstm::cpu::lstm_cell_fwd_cpu);
  m.impl("lstm_cell_bwd", &fusedlstm::cpu::lstm_cell_bwd_cpu);
  m.impl("lstm_cell_step", &fusedlstm::cpu::lstm_cell_step_cpu);
  m.impl("lstm_layer_fwd", &fusedlstm::cpu::lstm_layer_fwd_cpu);
  m.impl("lstm_layer_bwd", &fusedlstm::cpu::lstm_layer_bwd_cpu);
}
