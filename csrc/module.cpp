// The Python module `attnfast._C`: empty. Importing it loads this library, whose static
// registrations (TORCH_LIBRARY_IMPL at the end of each csrc/cpu/<op>.cpp and
// csrc/cuda/glue/<family>.cpp) give the attnfast ops their CPU and CUDA kernels. The schemas
// are not here: attnfast/_schema.py is their one source, and attnfast/_build.py defines them
// (torch.library) right after loading this library.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
