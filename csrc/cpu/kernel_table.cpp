// The CPU kernels of one SIMD level as a table, compiled once per level like the
// kernels themselves; register_cpu.cpp chooses one level's table per process. A
// constant: loading the library runs no code compiled for any level.
#include "lstm_cpu.h"

namespace fusedlstm::cpu {
inline namespace CPU_CAPABILITY {

const Kernels kernels{&lstm_cell_fwd_cpu, &lstm_cell_bwd_cpu, &lstm_layer_fwd_cpu, &lstm_layer_bwd_cpu};

}  // namespace CPU_CAPABILITY
}  // namespace fusedlstm::cpu
