// The SIMD level of the CPU kernels in this process (register_cpu.cpp), without
// torch's tensor headers: python_module.cpp reports it.
#pragma once

#include <string_view>

namespace fusedlstm::cpu {

// The level this process runs ("AVX512", "AVX2" or "DEFAULT"), chosen at the first
// call of this or of a CPU kernel: the best level built in whose CPU flags
// /proc/cpuinfo lists (DEFAULT where it cannot be read), no better than
// FUSEDLSTM_CPU_CAPABILITY when that is set. FUSEDLSTM_CPU_CAPABILITY naming no
// level built in is a c10::ValueError, raised by this and by every CPU kernel.
const char* cpu_capability();

// The choice for a CPU with `cpu_flags` (space-separated, as /proc/cpuinfo lists
// them) and a cap `requested` (a level's name in any case, or "" for none).
const char* choose_cpu_capability(std::string_view cpu_flags, std::string_view requested);

}  // namespace fusedlstm::cpu
