// `import fusedlstm._C` loads this library, whose static initialisers
// register the ops of ops.cpp and their kernels; the Python module itself is
// empty (no pybind11). The CMake build leaves this file out.
#include <Python.h>

extern "C" PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "fusedlstm kernels, registered as torch.ops.fusedlstm", -1,
      nullptr};
  return PyModule_Create(&module_def);
}
