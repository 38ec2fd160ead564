// `import fusedlstm._C` loads this library, whose static initialisers
// register the ops of ops.cpp and their kernels. The Python module itself
// (no pybind11) reports the SIMD level of the CPU kernels. The CMake build
// leaves this file out.
#include <Python.h>

#include <c10/util/Exception.h>

#include "cpu/cpu_capability.h"

namespace {

// Runs fn() -> const char* and returns it as a str; a c10::Error (an unknown
// FUSEDLSTM_CPU_CAPABILITY) becomes a ValueError with its message.
template <typename F>
PyObject* str_or_value_error(const F& fn) {
  try {
    return PyUnicode_FromString(fn());
  } catch (const c10::Error& e) {
    PyErr_SetString(PyExc_ValueError, e.what_without_backtrace());
    return nullptr;
  }
}

PyObject* cpu_capability(PyObject*, PyObject*) {
  return str_or_value_error([] { return fusedlstm::cpu::cpu_capability(); });
}

PyObject* choose_cpu_capability(PyObject*, PyObject* args) {
  const char* cpu_flags = nullptr;
  const char* requested = nullptr;
  if (!PyArg_ParseTuple(args, "s|z", &cpu_flags, &requested)) return nullptr;
  return str_or_value_error(
      [&] { return fusedlstm::cpu::choose_cpu_capability(cpu_flags, requested ? requested : ""); });
}

PyMethodDef methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The SIMD level of the CPU kernels in this process (AVX512, AVX2 or DEFAULT), chosen at the "
     "first call: the best level built in whose flags the CPU has, capped by "
     "FUSEDLSTM_CPU_CAPABILITY. ValueError when that names no level built in."},
    {"_choose_cpu_capability", choose_cpu_capability, METH_VARARGS,
     "_choose_cpu_capability(cpu_flags, requested=None): the level chosen for a CPU with these "
     "flags (space-separated, as /proc/cpuinfo lists them) and this cap."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fusedlstm kernels, registered as torch.ops.fusedlstm", -1,
      methods};
  return PyModule_Create(&module_def);
}
