// Host-side launch helpers shared by every kernel family: the current device, a kernel's
// once-per-device shared-memory opt-in, the device facts launchers size grids by (SM count,
// compute capability: looked up once per device, since a process may drive several GPUs),
// programmatic dependent launch, and the cudaLaunchKernelEx configuration.
#pragma once
#include <cuda_runtime.h>

#include <atomic>
#include <cstdlib>
#include <utility>

namespace lowbit {

constexpr int kMaxDevices = 64;

// The current device, which indexes the per-device facts below.
inline cudaError_t current_device(int& device) {
  const cudaError_t e = cudaGetDevice(&device);
  if (e != cudaSuccess) return e;
  return device >= 0 && device < kMaxDevices ? cudaSuccess : cudaErrorInvalidDevice;
}

// An integer tuning switch from the environment (0 when unset or not a number), for the
// sweeps' overrides; callers read it once per process and check its range.
inline int env_int(const char* name) {
  const char* v = std::getenv(name);
  return v ? std::atoi(v) : 0;
}

// Opts `kernel` in to `bytes` of dynamic shared memory on `device`: a per-device attribute
// of the function, set on its first launch there (`done`: the kernel's flags, one per device;
// two threads racing here both set it, which is harmless).
template <typename Kernel>
inline cudaError_t opt_in_smem(Kernel kernel, int bytes, int device,
                               std::atomic<bool> (&done)[kMaxDevices]) {
  if (done[device].load(std::memory_order_acquire)) return cudaSuccess;
  const cudaError_t e =
      cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes);
  if (e == cudaSuccess) done[device].store(true, std::memory_order_release);
  return e;
}

// Whether lowbit's sm_90 GEMMs and quantizers launch with programmatic stream serialization
// (programmatic dependent launch): each may then start its setup while the kernel before it
// in the stream finishes, and waits for it (griddepcontrol.wait) before touching global memory. On by
// default; set_programmatic_launch(false) gives plain stream order, e.g. to time both.
inline std::atomic<bool>& programmatic_launch_flag() {
  static std::atomic<bool> on{true};
  return on;
}
inline bool programmatic_launch() {
  return programmatic_launch_flag().load(std::memory_order_relaxed);
}
inline void set_programmatic_launch(bool on) {
  programmatic_launch_flag().store(on, std::memory_order_relaxed);
}

// The launch attribute that asks for it (the caller counts it only when it is on).
inline cudaLaunchAttribute programmatic_attribute() {
  cudaLaunchAttribute attr = {};
  attr.id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr.val.programmaticStreamSerializationAllowed = 1;
  return attr;
}

// The launch configuration of an sm_90 kernel: grid, block, dynamic shared memory, stream,
// and its attributes (a cluster of `cluster_x` CTAs along x when above 1; programmatic
// dependent launch when `programmatic`). The config points at the attributes it owns, so it
// is built in place and never copied.
class LaunchConfig {
 public:
  LaunchConfig(dim3 grid, int threads, int smem_bytes, cudaStream_t stream, int cluster_x,
               bool programmatic) {
    cfg_.gridDim = grid;
    cfg_.blockDim = dim3(threads, 1, 1);
    cfg_.dynamicSmemBytes = smem_bytes;
    cfg_.stream = stream;
    cfg_.attrs = attrs_;
    if (cluster_x > 1) {
      cudaLaunchAttribute& cluster = attrs_[cfg_.numAttrs++];
      cluster.id = cudaLaunchAttributeClusterDimension;
      cluster.val.clusterDim.x = cluster_x;
      cluster.val.clusterDim.y = 1;
      cluster.val.clusterDim.z = 1;
    }
    if (programmatic) attrs_[cfg_.numAttrs++] = programmatic_attribute();
  }
  LaunchConfig(const LaunchConfig&) = delete;
  LaunchConfig& operator=(const LaunchConfig&) = delete;
  const cudaLaunchConfig_t* get() const { return &cfg_; }

 private:
  cudaLaunchAttribute attrs_[2] = {};
  cudaLaunchConfig_t cfg_ = {};
};

// The status of a cudaLaunchKernelEx call, for the caller to report. A failed launch also
// records its error as the runtime's last error, where a later, unrelated launch check (e.g.
// torch's) would find it: it is cleared here, since the caller reports it.
inline cudaError_t launch_status(cudaError_t e) {
  if (e != cudaSuccess) (void)cudaGetLastError();
  return e;
}

// A launch with no attributes that reports its own status, as launch_status does: after
// `kernel<<<...>>>`, cudaGetLastError would also return (and clear) an error left by earlier,
// unrelated work, and name this kernel's launch as its cause.
template <typename... Params, typename... Args>
inline cudaError_t launch_plain(void (*kernel)(Params...), dim3 grid, dim3 block, int smem_bytes,
                                cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem_bytes;
  cfg.stream = stream;
  return launch_status(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// A device attribute, read once per device and cached; 0 when it cannot be read (the caller
// then falls back or reports the launch error it gets). A failed read is not cached.
template <cudaDeviceAttr kAttr>
inline int device_attribute(int device) {
  static std::atomic<int> known[kMaxDevices] = {};  // the value + 1; 0 = not read yet
  if (device < 0 || device >= kMaxDevices) return 0;
  const int k = known[device].load(std::memory_order_relaxed);
  if (k > 0) return k - 1;
  int v = 0;
  if (cudaDeviceGetAttribute(&v, kAttr, device) != cudaSuccess) {
    (void)cudaGetLastError();  // not sticky: later launches start clean
    return 0;
  }
  known[device].store(v + 1, std::memory_order_relaxed);
  return v;
}

// The SM count of `device` (0: unknown).
inline int sm_count(int device) {
  return device_attribute<cudaDevAttrMultiProcessorCount>(device);
}

// The SM count of `device`, or `fallback` where it is unknown: what a launcher sizes its grid
// or picks its tile by.
inline int sm_count_or(int device, int fallback) {
  const int sms = sm_count(device);
  return sms > 0 ? sms : fallback;
}

// sm_count_or of the current device (a failed query's error cleared).
inline int current_sm_count(int fallback) {
  int device = 0;
  if (current_device(device) != cudaSuccess) {
    (void)cudaGetLastError();
    return fallback;
  }
  return sm_count_or(device, fallback);
}

// major * 10 + minor of `device` (0: unknown).
inline int compute_capability(int device) {
  const int major = device_attribute<cudaDevAttrComputeCapabilityMajor>(device);
  return major > 0 ? major * 10 + device_attribute<cudaDevAttrComputeCapabilityMinor>(device)
                   : 0;
}

// The arch (80, 89, 90...) that `kernel`'s code running on `device` was compiled for (its
// ptxVersion): an sm_90 device runs sm_80 / sm_89 code through the JIT where the build has
// no sm_90 target, and so does a newer device. `known`: the kernel's answers per device (0:
// not read yet). 0 where it cannot be read (not cached: asked again).
template <typename Kernel>
inline int kernel_code_arch(Kernel kernel, int device, std::atomic<int> (&known)[kMaxDevices]) {
  const int k = known[device].load(std::memory_order_relaxed);
  if (k != 0) return k;
  cudaFuncAttributes attr = {};
  if (cudaFuncGetAttributes(&attr, kernel) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  known[device].store(attr.ptxVersion, std::memory_order_relaxed);
  return attr.ptxVersion;
}

// Whether `kernel` as it runs on `device` holds the PDL wait (griddepcontrol.wait,
// common/pdl.cuh), so it may go out as a programmatic dependent launch while
// programmatic_launch() is on: a device of sm_90+ running code compiled for sm_90+. Older
// code has no wait, and launched so it could read its inputs before the kernel before it
// wrote them. `known`: as for kernel_code_arch.
template <typename Kernel>
inline bool holds_pdl_wait(Kernel kernel, int device, std::atomic<int> (&known)[kMaxDevices]) {
  return compute_capability(device) >= 90 && kernel_code_arch(kernel, device, known) >= 90;
}

}  // namespace lowbit
