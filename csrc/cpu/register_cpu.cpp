// The CPU backend of the op contract: the choice of one SIMD level per process,
// and its kernels registered for the CPU dispatch key. Compiled once, with no
// SIMD flags: this code runs on every CPU.
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "cpu_capabilities.h"  // FUSEDLSTM_CPU_CAPABILITIES, written by build_config.py
#include "lstm_cpu.h"

namespace fusedlstm::cpu {

#define FUSEDLSTM_DECLARE_KERNELS(level, cpu_flags) \
  namespace level {                                 \
  extern const Kernels kernels;                     \
  }
FUSEDLSTM_CPU_CAPABILITIES(FUSEDLSTM_DECLARE_KERNELS)
#undef FUSEDLSTM_DECLARE_KERNELS

namespace {

struct Capability {
  const char* name;
  std::string_view cpu_flags;  // space-separated
  const Kernels* kernels;
};

// The levels built in, best first; the last needs no flags.
constexpr Capability kCapabilities[] = {
#define FUSEDLSTM_CAPABILITY(level, cpu_flags) {#level, cpu_flags, &level::kernels},
    FUSEDLSTM_CPU_CAPABILITIES(FUSEDLSTM_CAPABILITY)
#undef FUSEDLSTM_CAPABILITY
};

bool same_name(std::string_view a, std::string_view b) {
  auto upper = [](char c) { return c >= 'a' && c <= 'z' ? char(c - 'a' + 'A') : c; };
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i)
    if (upper(a[i]) != upper(b[i])) return false;
  return true;
}

std::vector<std::string_view> words(std::string_view text) {
  std::vector<std::string_view> out;
  size_t begin = 0;
  while (begin < text.size()) {
    const size_t end = std::min(text.find_first_of(" \t\n", begin), text.size());
    if (end > begin) out.push_back(text.substr(begin, end - begin));
    begin = end + 1;
  }
  return out;
}

bool has_flags(std::string_view cpu_flags, std::string_view needed) {
  const std::vector<std::string_view> have = words(cpu_flags);
  for (std::string_view flag : words(needed))
    if (std::find(have.begin(), have.end(), flag) == have.end()) return false;
  return true;
}

const Capability& choose(std::string_view cpu_flags, std::string_view requested) {
  size_t first = 0;
  if (!requested.empty()) {
    while (first < std::size(kCapabilities) && !same_name(kCapabilities[first].name, requested)) ++first;
    if (first == std::size(kCapabilities)) {
      std::string names;
      for (const Capability& c : kCapabilities) names += std::string(names.empty() ? "" : ", ") + c.name;
      TORCH_CHECK_VALUE(false, "FUSEDLSTM_CPU_CAPABILITY must be one of ", names,
                        " (the SIMD levels of the CPU kernels built into fusedlstm), got \"",
                        std::string(requested), "\"");
    }
  }
  for (size_t i = first; i + 1 < std::size(kCapabilities); ++i)
    if (has_flags(cpu_flags, kCapabilities[i].cpu_flags)) return kCapabilities[i];
  return kCapabilities[std::size(kCapabilities) - 1];
}

// The flags of the first processor in /proc/cpuinfo; empty where there is none.
std::string proc_cpuinfo_flags() {
  std::ifstream cpuinfo("/proc/cpuinfo");
  std::string line;
  while (std::getline(cpuinfo, line)) {
    if (line.rfind("flags", 0) == 0) {
      const size_t colon = line.find(':');
      return colon == std::string::npos ? std::string() : line.substr(colon + 1);
    }
  }
  return {};
}

struct Choice {
  const Capability* capability = nullptr;
  std::string error;  // why there is none
};

const Choice& choice() {
  static const Choice chosen = [] {
    Choice c;
    const char* requested = std::getenv("FUSEDLSTM_CPU_CAPABILITY");
    try {
      c.capability = &choose(proc_cpuinfo_flags(), requested ? requested : "");
    } catch (const c10::Error& e) {
      c.error = e.what_without_backtrace();
    }
    return c;
  }();
  return chosen;
}

const Capability& active() {
  const Choice& c = choice();
  TORCH_CHECK_VALUE(c.capability != nullptr, c.error);
  return *c.capability;
}

}  // namespace

const char* choose_cpu_capability(std::string_view cpu_flags, std::string_view requested) {
  return choose(cpu_flags, requested).name;
}

const char* cpu_capability() { return active().name; }

const Kernels& active_kernels() { return *active().kernels; }

}  // namespace fusedlstm::cpu

TORCH_LIBRARY_IMPL(fusedlstm, CPU, m) {
  m.impl("lstm_cell_fwd", TORCH_FN(fusedlstm::cpu::lstm_cell_fwd_cpu));
  m.impl("lstm_cell_bwd", TORCH_FN(fusedlstm::cpu::lstm_cell_bwd_cpu));
  m.impl("lstm_layer_fwd", TORCH_FN(fusedlstm::cpu::lstm_layer_fwd_cpu));
  m.impl("lstm_layer_bwd", TORCH_FN(fusedlstm::cpu::lstm_layer_bwd_cpu));
}
