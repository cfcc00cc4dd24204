// The one binding file of lowbit._C. Kernels take raw device pointers, sizes, strides and a
// stream handle; the Python layer validates every argument before it gets here, so this file
// only converts types and turns a failed launch into a Python RuntimeError.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <stdexcept>
#include <string>

#ifdef LOWBIT_WITH_CUDA
#include "fp8/fp8_quant.h"
#include "fp8_gemm/fp8_gemm_mma.h"
#include "fp8_gemm/fp8_gemm_sm90.h"
#include "fp8_gemm/fp8_gemm_smallm.h"
#include "fp8_gemm/launch_facts.h"
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

#ifdef LOWBIT_WITH_CUDA
template <typename T>
const T* cptr(uintptr_t p) {
  return reinterpret_cast<const T*>(p);
}

void check_launch(cudaError_t err, const char* kernel) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string(kernel) + ": " + lowbit::error_string(err));
}

py::list fp8_gemm_kernels_built() {
  py::list names;
  names.append("sm80_fp8_gemm_smallm");
  names.append("sm80_fp8_gemm_mma");
#ifdef LOWBIT_HAVE_SM89
  names.append("sm89_fp8_gemm_smallm");
  names.append("sm89_fp8_gemm_mma");
#endif
#ifdef LOWBIT_HAVE_SM90A
  names.append("sm90_fp8_gemm_wgmma");
  names.append("sm90_fp8_gemm_swapab");
#endif
  return names;
}

void fp8_gemm(const std::string& kernel, uintptr_t a, int64_t lda, uintptr_t b, int64_t ldb,
              uintptr_t a_scale, int64_t a_scale_ld, int a_mode, uintptr_t b_scale,
              int64_t b_scale_ld, int b_mode, uintptr_t bias, int bias_dtype, uintptr_t out,
              int64_t ldo, int out_dtype, int M, int N, int K, bool fast_accum,
              uintptr_t stream) {
  lowbit::Fp8GemmArgs args{};
  args.a = cptr<uint8_t>(a);
  args.b = cptr<uint8_t>(b);
  args.lda = lda;
  args.ldb = ldb;
  args.a_scale = cptr<float>(a_scale);
  args.b_scale = cptr<float>(b_scale);
  args.a_scale_ld = a_scale_ld;
  args.b_scale_ld = b_scale_ld;
  args.a_mode = static_cast<lowbit::ScaleMode>(a_mode);
  args.b_mode = static_cast<lowbit::ScaleMode>(b_mode);
  args.bias = reinterpret_cast<const void*>(bias);
  args.bias_dtype = static_cast<lowbit::OutDtype>(bias_dtype);
  args.out = reinterpret_cast<void*>(out);
  args.ldo = ldo;
  args.out_dtype = static_cast<lowbit::OutDtype>(out_dtype);
  args.M = M;
  args.N = N;
  args.K = K;
  args.fast_accum = fast_accum;
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (kernel == "sm80_fp8_gemm_smallm") {
    check_launch(lowbit::sm80_fp8_gemm_smallm(args, s), kernel.c_str());
    return;
  }
  if (kernel == "sm80_fp8_gemm_mma") {
    check_launch(lowbit::sm80_fp8_gemm_mma(args, s), kernel.c_str());
    return;
  }
#ifdef LOWBIT_HAVE_SM89
  if (kernel == "sm89_fp8_gemm_smallm") {
    check_launch(lowbit::sm89_fp8_gemm_smallm(args, s), kernel.c_str());
    return;
  }
  if (kernel == "sm89_fp8_gemm_mma") {
    check_launch(lowbit::sm89_fp8_gemm_mma(args, s), kernel.c_str());
    return;
  }
#endif
#ifdef LOWBIT_HAVE_SM90A
  if (kernel == "sm90_fp8_gemm_wgmma") {
    check_launch(lowbit::sm90_fp8_gemm_wgmma(args, s), kernel.c_str());
    return;
  }
  if (kernel == "sm90_fp8_gemm_swapab") {
    check_launch(lowbit::sm90_fp8_gemm_swapab(args, s), kernel.c_str());
    return;
  }
#endif
  throw py::value_error("kernel '" + kernel + "' is not in this build");
}
#endif  // LOWBIT_WITH_CUDA

#ifdef LOWBIT_WITH_CUDA
// ---- FP8 quantize / dequantize (csrc/fp8/fp8_quant.h). Enums travel as ints: fmt 0 e4m3fn,
// 1 e5m2, 2 e4m3fnuz; float types 0 fp32, 1 bf16, 2 fp16; granularity 0 tensor, 1 row,
// 2 group (1 x group, also 1x128 blocks), 3 128x128 blocks. Pointers are data_ptr() ints
// (0 = none), strides in elements, `stream` a cudaStream_t as an int.
void fp8_quantize(uintptr_t x, int x_type, int64_t rows, int64_t cols, int64_t row_stride,
                  int64_t col_stride, uintptr_t q, int fmt, bool saturate, int granularity,
                  int64_t group, uintptr_t scale_in, uintptr_t scale_out, uintptr_t workspace,
                  bool hw_cvt, uintptr_t stream) {
  lowbit::fp8::QuantizeArgs a;
  a.x = reinterpret_cast<const void*>(x);
  a.x_type = static_cast<lowbit::fp8::FloatType>(x_type);
  a.rows = rows;
  a.cols = cols;
  a.row_stride = row_stride;
  a.col_stride = col_stride;
  a.q = reinterpret_cast<void*>(q);
  a.fmt = static_cast<lowbit::fp8::Fp8Format>(fmt);
  a.saturate = saturate;
  a.granularity = static_cast<lowbit::fp8::Granularity>(granularity);
  a.group = group;
  a.scale_in = reinterpret_cast<const float*>(scale_in);
  a.scale_out = reinterpret_cast<float*>(scale_out);
  a.workspace = reinterpret_cast<uint32_t*>(workspace);
  a.hw_cvt = hw_cvt;
  const cudaError_t err = lowbit::fp8::quantize(a, reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("lowbit fp8_quantize: ") + cudaGetErrorString(err));
  }
}

void fp8_dequantize(uintptr_t q, int fmt, int64_t rows, int64_t cols, int64_t row_stride,
                    int64_t col_stride, uintptr_t scale, int64_t scale_tile_rows,
                    int64_t scale_tile_cols, int64_t scale_ld, uintptr_t out, int out_type,
                    uintptr_t stream) {
  lowbit::fp8::DequantizeArgs a;
  a.q = reinterpret_cast<const void*>(q);
  a.fmt = static_cast<lowbit::fp8::Fp8Format>(fmt);
  a.rows = rows;
  a.cols = cols;
  a.row_stride = row_stride;
  a.col_stride = col_stride;
  a.scale = reinterpret_cast<const float*>(scale);
  a.scale_tile_rows = scale_tile_rows;
  a.scale_tile_cols = scale_tile_cols;
  a.scale_ld = scale_ld;
  a.out = reinterpret_cast<void*>(out);
  a.out_type = static_cast<lowbit::fp8::FloatType>(out_type);
  const cudaError_t err = lowbit::fp8::dequantize(a, reinterpret_cast<cudaStream_t>(stream));
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("lowbit fp8_dequantize: ") + cudaGetErrorString(err));
  }
}
#endif  // LOWBIT_WITH_CUDA

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "lowbit compiled kernels (torch-free: raw pointers, sizes, strides, stream)";
  m.def("build_info", &build_info, "How this module was built: CUDA yes/no, archs, versions");
  m.def("device_count", &device_count, "CUDA devices visible to the runtime (0 without a driver)");
  m.def("device_info", &device_info, py::arg("index"), "Name, capability, SMs, L2 of a device");
  m.def("driver_version", &driver_version, "CUDA driver version, 0 without a driver");
#ifdef LOWBIT_WITH_CUDA
  m.def("fp8_gemm_kernels_built", &fp8_gemm_kernels_built,
        "Names of the FP8 GEMM kernels compiled into this build");
  m.def("fp8_gemm", &fp8_gemm, "FP8 GEMM with fp32 scales: run the named kernel",
        py::arg("kernel"), py::arg("a"), py::arg("lda"), py::arg("b"), py::arg("ldb"),
        py::arg("a_scale"), py::arg("a_scale_ld"), py::arg("a_mode"), py::arg("b_scale"),
        py::arg("b_scale_ld"), py::arg("b_mode"), py::arg("bias"), py::arg("bias_dtype"),
        py::arg("out"), py::arg("ldo"), py::arg("out_dtype"), py::arg("M"), py::arg("N"),
        py::arg("K"), py::arg("fast_accum"), py::arg("stream"));
  m.def("set_programmatic_launch", &lowbit::set_programmatic_launch, py::arg("on"),
        "Launch the sm_90 GEMMs as programmatic dependent launches (on by default)");
  m.def("programmatic_launch", &lowbit::programmatic_launch,
        "Whether the sm_90 GEMMs launch as programmatic dependent launches");
#endif
#ifdef LOWBIT_WITH_CUDA
  m.def("fp8_quantize", &fp8_quantize,
        "q = encode(x * (1 / scale)) on the stream; static or dynamic scales (csrc/fp8)",
        py::arg("x"), py::arg("x_type"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
        py::arg("col_stride"), py::arg("q"), py::arg("fmt"), py::arg("saturate"),
        py::arg("granularity"), py::arg("group"), py::arg("scale_in"), py::arg("scale_out"),
        py::arg("workspace"), py::arg("hw_cvt"), py::arg("stream"));
  m.def("fp8_dequantize", &fp8_dequantize, "out = decode(q) * scale on the stream (csrc/fp8)",
        py::arg("q"), py::arg("fmt"), py::arg("rows"), py::arg("cols"), py::arg("row_stride"),
        py::arg("col_stride"), py::arg("scale"), py::arg("scale_tile_rows"),
        py::arg("scale_tile_cols"), py::arg("scale_ld"), py::arg("out"), py::arg("out_type"),
        py::arg("stream"));
#endif
}
