// The one binding file of lowbit._C. Kernels take raw device pointers, sizes, strides and a
// stream handle; the Python layer validates every argument before it gets here, so this file
// only converts types and turns a failed launch into a Python RuntimeError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <string>

#ifdef LOWBIT_WITH_CUDA
#include "runtime.h"
#endif

namespace py = pybind11;

namespace {

py::dict build_info() {
  py::dict d;
#ifdef LOWBIT_WITH_CUDA
  d["cuda"] = true;
  d["cuda_archs"] = std::string(LOWBIT_CUDA_ARCHS);
  d["cuda_version"] = std::string(LOWBIT_CUDA_VERSION);
  d["cuda_runtime"] = lowbit::runtime_version();
  d["cudart_static"] = true;
#else
  d["cuda"] = false;
  d["cuda_archs"] = std::string();
  d["cuda_version"] = std::string();
  d["cuda_runtime"] = 0;
  d["cudart_static"] = false;
#endif
  return d;
}

int device_count() {
#ifdef LOWBIT_WITH_CUDA
  return lowbit::device_count();
#else
  return 0;
#endif
}

py::dict device_info(int index) {
#ifdef LOWBIT_WITH_CUDA
  lowbit::DeviceInfo info = lowbit::device_info(index);
  py::dict d;
  d["name"] = info.name;
  d["capability"] = py::make_tuple(info.major, info.minor);
  d["multiprocessors"] = info.multiprocessors;
  d["l2_bytes"] = info.l2_bytes;
  d["global_bytes"] = info.global_bytes;
  return d;
#else
  (void)index;
  throw py::value_error("lowbit._C was built without CUDA: no device info");
#endif
}

int driver_version() {
#ifdef LOWBIT_WITH_CUDA
  return lowbit::driver_version();
#else
  return 0;
#endif
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lowbit compiled kernels (torch-free: raw pointers, sizes, strides, stream)";
  m.def("build_info", &build_info, "How this module was built: CUDA yes/no, archs, versions");
  m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without a driver)");
  m.def("device_info", &device_info, py::arg("index"), "Name, capability, SMs, L2 of a device");
  m.def("driver_version", &driver_version, "CUDA driver version, 0 without a driver");
}
