// Torch-free view of the CUDA runtime: what `lowbit info` and the Python layer need to know
// about the devices, and the error-string helper every launcher's caller uses.
#pragma once
#include <string>

namespace lowbit {

struct DeviceInfo {
  std::string name;
  int major = 0;
  int minor = 0;
  int multiprocessors = 0;
  long long l2_bytes = 0;
  long long global_bytes = 0;
};

// Number of CUDA devices; 0 (not an error) when there is no driver or no device.
int device_count();
// Properties of device `index`; throws std::runtime_error with the CUDA error string.
DeviceInfo device_info(int index);
// The CUDA runtime version this module was linked against (e.g. 13000), and the driver's
// (0 when there is no driver).
int runtime_version();
int driver_version();
// Message for a CUDA error code, as the runtime spells it.
std::string error_string(int code);

}  // namespace lowbit
