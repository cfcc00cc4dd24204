// lowbit._torch_ops: the CUDA implementations of registered ops in C++ (fp8_linear,
// int8_linear, fp8_scaled_mm, quantize_fp8, dequantize_fp8, int8_mm, int8_gemm, quantize_int8,
// dequantize_int8, w4a16_gemm, w8a16_gemm, int4_quantize), so that a
// call through the torch dispatcher (what a compiled graph makes, and torch.ops.lowbit.<op>)
// costs no Python, and the entries of the eager API and the quantized modules into the same
// code.
//
// The Python layer stays the source of truth: a call whose argument signature this library
// has not seen goes to lowbit::_<op>_prepare (lowbit/_native.py), which checks the arguments,
// runs the checked op and returns its outputs with a *plan*: the prepared launch object of
// lowbit._C the op chose for the signature (for the linear ops, the one fused launch of
// quantizer and GEMM, lowbit/backends/cuda/linear.py) and the workspace it takes. Later calls
// of that signature allocate the outputs (the dtypes and sizes the prepare call returned) and
// the workspace and call the plan's launch, with no Python. The signature holds everything
// the checks and the kernel choice read of the arguments: each tensor's sizes, strides,
// dtype, device and data-pointer alignment, the op's other arguments, and the environment
// switches the choice reads. What Python holds in context variables (lowbit.use_backend,
// lowbit.explain) is not visible here: while any such block is open, Python holds the plans
// off (lowbit_native_hold) and every call takes the Python path. Python empties the table
// when a kernel registration changes what the choices would be (lowbit_native_reset).
// A signature whose chosen kernel is no single lowbit._C launch (a Triton kernel, the INT8
// GEMM of asymmetric activations, which reads the weight's row sums that Python computes or
// keeps per weight) is kept as "no plan": its calls go to Python. For a single op, the plan
// may then name the Python function its choice runs (the "step"): the eager entry hands it
// back, and Python calls it with no checks and no choice (lowbit/api.py).
//
// Entries from Python (functions of this extension; lowbit/_native.py): <op>_module(module,
// x) for the quantized modules, which read the module's tensors as nn.Module's attribute
// lookup finds them, and <op>(args...) for the eager API, which take the op's arguments as
// lowbit's API passes them. Each returns the outputs when a plan serves the signature, None
// when Python must serve it ("no plan", a held or CPU call, a tensor subclass, an argument of
// another type), [step] when the plan names a Python step (the eager API's entries only), or
// NotImplemented when the signature is unseen (the caller then calls the registered op, which
// prepares the plan).
//
// This file includes torch headers and links against the torch it was built with
// (lowbit/_native.py loads it only under that torch version); lowbit._C does neither. The two
// share no C++ types: a plan's launch is a plain function of lowbit._C taking the launch
// object's address (bindings.cpp, "native").
#include <Python.h>
#include <unistd.h>  // environ

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <c10/util/SmallVector.h>
#include <torch/csrc/Device.h>
#include <torch/csrc/Dtype.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

namespace {

using Launch = int (*)(void* self, const uintptr_t* pointers, uintptr_t stream, char* error,
                       size_t error_size);
// A launch's answer besides 0 (launched) and 1 (failed, with the error text): it launched
// nothing and this call must take the Python path (the weight-only GEMMs on a capturing
// stream, whose graph needs split counters of its own).
constexpr int kDeclined = 2;

// The plan list lowbit/_native.py returns: [kPlanFormat, launch, self, workspace bytes, step];
// launch 0 for "no plan" (step: 0, or the address of the Python function the signature runs,
// which Python keeps alive until it empties the table), or an empty list when Python could
// not tell (nothing is kept).
constexpr int64_t kPlanFormat = 5;
constexpr size_t kPlanLength = 5;
// Signatures kept; a full table is emptied (Python keeps the launch objects alive).
constexpr size_t kMaxPlans = 4096;

struct Output {
  at::ScalarType dtype;
  c10::SmallVector<int64_t, 4> sizes;
};

struct Plan {
  Launch launch = nullptr;  // nullptr: "no plan", Python serves the signature
  void* self = nullptr;
  int64_t workspace_bytes = 0;
  c10::SmallVector<Output, 3> outputs;  // contiguous, on the first tensor's device
  PyObject* step = nullptr;  // with no launch: the Python function Python may call instead
};

struct Key {
  c10::SmallVector<int64_t, 48> v;  // inline: a call's key costs no allocation
  bool usable = true;  // false: an argument no plan may take
  bool operator==(const Key& o) const { return v == o.v; }
};

struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;
    for (int64_t x : k.v) h = (h ^ static_cast<uint64_t>(x)) * 1099511628211ull;
    return static_cast<size_t>(h);
  }
};

// The environment switches a choice reads (lowbit/_backend.py: _STEP_ENV, and LOWBIT_BACKEND
// for the default backend); a change empties the table (refresh_environment_locked).
constexpr const char* kEnvSwitches[] = {
    "LOWBIT_BACKEND",         "LOWBIT_ARCH",         "TRITON_INTERPRET",
    "LOWBIT_TRITON_AUTOTUNE", "LOWBIT_TRITON_FP8_PROMOTE", "LOWBIT_TRITON_FP8_HWCAST",
    "LOWBIT_FUSED_QUANT",     "LOWBIT_EARLY_WEIGHTS", "LOWBIT_CHECK_SCALES"};

std::string environment() {
  std::string s;
  for (const char* name : kEnvSwitches) {
    const char* v = std::getenv(name);
    s += v ? v : "\x01";  // unset differs from empty
    s += '\0';
  }
  return s;
}

std::mutex g_mutex;  // the tables, and every launch (launch objects keep per-call state)
std::unordered_map<Key, Plan, KeyHash> g_plans;
std::string g_environment = environment();
std::vector<char*> g_environ_seen;  // environ's entries (and its null end) when last read
std::atomic<int64_t> g_hold{0};
uint64_t g_epoch = 0;  // bumped by every reset and switch change (under g_mutex)

// Empties the table when a switch changed since the last call. The switches are read again
// only when the process environment changed, which a call finds by comparing environ's
// entry pointers with the last ones seen (a few tens of nanoseconds; nine getenv scans and
// the string they build cost several times that, on every call): setenv and unsetenv, what
// os.environ's assignments and deletions call, replace an entry's pointer or the array (glibc
// keeps every value string it made, so no new value reuses a pointer in use). With g_mutex.
void refresh_environment_locked() {
  char** const env = environ;
  size_t n = 0;
  while (env != nullptr && env[n] != nullptr) ++n;
  if (env != nullptr && g_environ_seen.size() == n + 1 &&
      std::equal(env, env + n + 1, g_environ_seen.begin()))
    return;
  if (env != nullptr)
    g_environ_seen.assign(env, env + n + 1);
  else
    g_environ_seen.clear();
  std::string now = environment();
  if (now != g_environment) {
    g_plans.clear();
    g_environment = std::move(now);
    ++g_epoch;
  }
}
std::atomic<int64_t> g_hits{0}, g_misses{0};

// The ops, as the first entry of a key.
enum Op : int64_t {
  kFp8Linear,
  kInt8Linear,
  kFp8ScaledMm,
  kQuantizeFp8,
  kInt8Mm,
  kInt8Gemm,
  kQuantizeInt8,
  kW4a16Gemm,
  kW8a16Gemm,
  kInt4Quantize,
  kDequantizeFp8,
  kDequantizeInt8
};

int backend_code(c10::string_view backend) {
  static constexpr const char* kNames[] = {"default", "auto", "cuda", "triton", "reference"};
  for (int i = 0; i < 5; ++i)
    if (backend == kNames[i]) return i;
  return -1;
}

void add(Key& key, const at::Tensor& t) {
  if (!t.defined()) {
    key.v.push_back(-1);
    return;
  }
  // Only dense tensors with storage have the strides and the pointer a key holds (sparse,
  // nested, meta and functorch-wrapped tensors go to Python, which says what it takes).
  if (t.layout() != at::kStrided || t.is_nested() || t.is_meta() || !t.has_storage()) {
    key.usable = false;
    return;
  }
  const int64_t dim = t.dim();
  key.v.push_back(dim);
  for (int64_t s : t.sizes()) key.v.push_back(s);
  for (int64_t s : t.strides()) key.v.push_back(s);
  key.v.push_back(static_cast<int64_t>(t.scalar_type()));
  key.v.push_back(static_cast<int64_t>(t.device().type()));
  key.v.push_back(t.device().index());
  key.v.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16));
}

void add(Key& key, int64_t v) { key.v.push_back(v); }

void add(Key& key, c10::IntArrayRef v) {
  key.v.push_back(static_cast<int64_t>(v.size()));
  key.v.insert(key.v.end(), v.begin(), v.end());
}

void add(Key& key, c10::string_view s) {  // the length, then the bytes, 8 to an entry
  key.v.push_back(static_cast<int64_t>(s.size()));
  for (size_t i = 0; i < s.size(); i += 8) {
    int64_t chunk = 0;
    std::memcpy(&chunk, s.data() + i, std::min<size_t>(8, s.size() - i));
    key.v.push_back(chunk);
  }
}

// The key of a call, or nullopt when no plan may serve it (Python holds them off, or a
// backend name Python will reject). `parts`: the op's arguments (tensors, ints, strings).
template <class... Parts>
std::optional<Key> signature(Op op, c10::string_view backend, const Parts&... parts) {
  if (g_hold.load(std::memory_order_relaxed) != 0) return std::nullopt;
  const int b = backend_code(backend);
  if (b < 0) return std::nullopt;
  Key key;
  key.v.reserve(48);
  key.v.push_back(op);
  key.v.push_back(b);
  (add(key, parts), ...);
  if (!key.usable) return std::nullopt;
  return key;
}

// The plan of `key`, after emptying the table if the environment switches changed. Called
// with g_mutex held: a plan's launch object lives until Python empties the table, which
// takes the mutex first (lowbit_native_reset).
const Plan* find_locked(const Key& key) {
  refresh_environment_locked();
  auto it = g_plans.find(key);
  return it == g_plans.end() ? nullptr : &it->second;
}

// Keeps the plan Python returned for `key` with the outputs it made, unless the table was
// reset (a kernel registration) or the environment switches changed while Python prepared
// it: `epoch` is what it was before the call.
template <size_t N>
void remember(const std::optional<Key>& key, const std::vector<int64_t>& plan,
              const std::array<at::Tensor, N>& outputs, uint64_t epoch) {
  if (!key || plan.empty() || g_hold.load() != 0) return;
  TORCH_CHECK(plan.size() == kPlanLength && plan[0] == kPlanFormat,
              "lowbit: a plan from lowbit/_native.py of an unknown format");
  Plan p;
  p.launch = reinterpret_cast<Launch>(static_cast<uintptr_t>(plan[1]));
  p.self = reinterpret_cast<void*>(static_cast<uintptr_t>(plan[2]));
  p.workspace_bytes = plan[3];
  p.step = p.launch ? nullptr : reinterpret_cast<PyObject*>(static_cast<uintptr_t>(plan[4]));
  if (p.launch) {
    for (const at::Tensor& t : outputs) {
      if (!t.defined() || !t.is_contiguous()) return;  // not what a plan can allocate
      p.outputs.push_back({t.scalar_type(), {t.sizes().begin(), t.sizes().end()}});
    }
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  refresh_environment_locked();
  if (epoch != g_epoch) return;
  if (g_plans.size() >= kMaxPlans) g_plans.clear();
  g_plans.emplace(*key, std::move(p));
}

// (0 for a tensor without storage too: its call has no key, see add())
uintptr_t address(const at::Tensor& t) {
  return t.defined() && t.has_storage() ? reinterpret_cast<uintptr_t>(t.data_ptr()) : 0;
}

// A call of an op: the key of its signature and its launch's pointer arguments: the op's
// tensors, then the workspace and the N outputs, left to fill.
template <size_t P, size_t N>
struct Call {
  std::optional<Key> key;
  std::array<uintptr_t, P> pointers;
  at::Device device;  // of the outputs
};

// Allocates the outputs and the workspace, then makes the plan's launch on the device's
// current stream, with g_mutex held: launch objects keep per-call state, and a reset (which
// takes the mutex) must not free one in use. nullopt: the launch declined the call.
// `unused`: a bit per output its caller drops, left undefined (its pointer 0) when the plan
// makes it empty: a symmetric quantizer's zero points, which the eager API discards.
template <size_t P, size_t N>
std::optional<std::array<at::Tensor, N>> run_locked(const char* op, const Plan& plan,
                                                    const Call<P, N>& call,
                                                    uint32_t unused = 0) {
  static_assert(P > N, "the pointers end with the workspace and the outputs");
  TORCH_CHECK(plan.outputs.size() == N, "lowbit::", op, ": a plan of ", plan.outputs.size(),
              " outputs");
  c10::DeviceGuard guard(call.device);
  std::array<uintptr_t, P> pointers = call.pointers;
  std::array<at::Tensor, N> outputs;
  for (size_t i = 0; i < N; ++i) {
    const Output& o = plan.outputs[i];
    if (((unused >> i) & 1u) != 0 &&
        std::find(o.sizes.begin(), o.sizes.end(), int64_t{0}) != o.sizes.end()) {
      pointers[P - N + i] = 0;
      continue;
    }
    outputs[i] = at::empty(o.sizes, at::TensorOptions().dtype(o.dtype).device(call.device));
    pointers[P - N + i] = address(outputs[i]);
  }
  at::Tensor workspace;  // held until the launch is queued
  if (plan.workspace_bytes > 0) {
    workspace = at::empty({plan.workspace_bytes},
                          at::TensorOptions().dtype(at::kByte).device(call.device));
    pointers[P - N - 1] = address(workspace);
  }
  const auto* impl = c10::impl::getDeviceGuardImpl(call.device.type());
  const uintptr_t stream = reinterpret_cast<uintptr_t>(
      impl->getStreamNativeHandle(impl->getStream(call.device)));
  char error[512] = {0};
  const int rc = plan.launch(plan.self, pointers.data(), stream, error, sizeof error);
  if (rc == kDeclined) return std::nullopt;
  TORCH_CHECK(rc == 0, "lowbit::", op, ": ", error);
  return outputs;
}

template <class Signature>
c10::TypedOperatorHandle<Signature> prepare_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

template <size_t N>
using Prepared = std::pair<std::array<at::Tensor, N>, std::vector<int64_t>>;

// One call through the dispatcher: the plan kept for the signature when there is one, else
// `prepare()` (the Python implementation), whose plan is kept for the next call (a call
// whose plan declined it keeps that plan).
template <size_t P, size_t N, class Prepare>
std::array<at::Tensor, N> serve(const char* op, const Call<P, N>& call, Prepare&& prepare) {
  uint64_t epoch;
  bool declined = false;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (call.key) {
      const Plan* plan = find_locked(*call.key);
      if (plan && plan->launch) {
        if (auto outputs = run_locked(op, *plan, call)) {
          g_hits.fetch_add(1, std::memory_order_relaxed);
          return std::move(*outputs);
        }
        declined = true;
      }
    }
    epoch = g_epoch;
  }
  g_misses.fetch_add(1, std::memory_order_relaxed);
  Prepared<N> prepared = prepare();
  if (!declined) remember(call.key, prepared.second, prepared.first, epoch);
  return prepared.first;
}

// ---------------------------------------------------------------------------------------------
// The ops' calls (the same for the registered op and the entries from Python).

Call<7, 1> fp8_linear_call(c10::string_view backend, const at::Tensor& x,
                           const at::Tensor& weight, const at::Tensor& weight_scale,
                           const at::Tensor& bias, const at::Tensor& act_scale) {
  return {signature(kFp8Linear, backend, x, weight, weight_scale, bias, act_scale),
          {address(x), address(act_scale), address(weight), address(weight_scale),
           address(bias), 0, 0},
          x.device()};
}

Call<9, 1> int8_linear_call(c10::string_view backend, const at::Tensor& x,
                            const at::Tensor& weight, const at::Tensor& weight_scale,
                            const at::Tensor& bias, const at::Tensor& act_scale,
                            const at::Tensor& act_zero, bool act_symmetric) {
  return {signature(kInt8Linear, backend, x, weight, weight_scale, bias, act_scale, act_zero,
                    int64_t{act_symmetric}),
          {address(x), address(act_scale), address(act_zero), address(weight),
           address(weight_scale), 0, address(bias), 0, 0},
          x.device()};
}

Call<7, 1> fp8_scaled_mm_call(c10::string_view backend, const at::Tensor& a,
                              const at::Tensor& b, const at::Tensor& a_scale,
                              const at::Tensor& b_scale, const at::Tensor& bias,
                              at::ScalarType out_dtype, bool fast_accum) {
  return {signature(kFp8ScaledMm, backend, a, b, a_scale, b_scale, bias,
                    static_cast<int64_t>(out_dtype), int64_t{fast_accum}),
          {address(a), address(b), address(a_scale), address(b_scale), address(bias), 0, 0},
          a.device()};
}

Call<5, 2> quantize_fp8_call(c10::string_view backend, const at::Tensor& x,
                             const at::Tensor& scale, c10::string_view fmt,
                             c10::string_view granularity, int64_t group_size,
                             c10::IntArrayRef block, bool saturate) {
  return {signature(kQuantizeFp8, backend, x, scale, fmt, granularity, group_size, block,
                    int64_t{saturate}),
          {address(x), address(scale), 0, 0, 0},
          x.device()};
}

Call<4, 1> int8_mm_call(c10::string_view backend, const at::Tensor& a, const at::Tensor& b) {
  return {signature(kInt8Mm, backend, a, b), {address(a), address(b), 0, 0}, a.device()};
}

Call<8, 1> int8_gemm_call(c10::string_view backend, const at::Tensor& a, const at::Tensor& b,
                          const at::Tensor& a_scale, const at::Tensor& b_scale,
                          const at::Tensor& bias, at::ScalarType out_dtype,
                          const at::Tensor& a_zero) {
  return {signature(kInt8Gemm, backend, a, b, a_scale, b_scale, bias,
                    static_cast<int64_t>(out_dtype), a_zero),
          {address(a), address(b), address(a_scale), address(b_scale), address(bias),
           address(a_zero), 0, 0},
          a.device()};
}

Call<7, 3> quantize_int8_call(c10::string_view backend, const at::Tensor& x,
                              const at::Tensor& scale, const at::Tensor& zero,
                              c10::string_view granularity, int64_t group_size,
                              c10::IntArrayRef block, bool symmetric) {
  return {signature(kQuantizeInt8, backend, x, scale, zero, granularity, group_size, block,
                    int64_t{symmetric}),
          {address(x), address(scale), address(zero), 0, 0, 0, 0},
          x.device()};
}

// The weight-only GEMMs' launch takes x, w, scales, zeros, bias (the same five for both
// ops, zeros 0 for w8a16), the workspace and the output; perm is in the key only (a plan
// is made without it).
Call<7, 1> w4a16_gemm_call(c10::string_view backend, const at::Tensor& x,
                           const at::Tensor& qweight, const at::Tensor& scales,
                           const at::Tensor& zeros, int64_t group_size, const at::Tensor& perm,
                           const at::Tensor& bias) {
  return {signature(kW4a16Gemm, backend, x, qweight, scales, zeros, group_size, perm, bias),
          {address(x), address(qweight), address(scales), address(zeros), address(bias), 0, 0},
          x.device()};
}

Call<7, 1> w8a16_gemm_call(c10::string_view backend, const at::Tensor& x, const at::Tensor& w,
                           const at::Tensor& w_scale, const at::Tensor& bias) {
  return {signature(kW8a16Gemm, backend, x, w, w_scale, bias),
          {address(x), address(w), address(w_scale), 0, address(bias), 0, 0},
          x.device()};
}

Call<5, 3> int4_quantize_call(c10::string_view backend, const at::Tensor& w, int64_t group_size,
                              bool symmetric) {
  return {signature(kInt4Quantize, backend, w, group_size, int64_t{symmetric}),
          {address(w), 0, 0, 0, 0},
          w.device()};
}

// The dequantizers' launch takes q, scale (and int8's zero), the workspace (none) and the
// output.
Call<4, 1> dequantize_fp8_call(c10::string_view backend, const at::Tensor& q,
                               const at::Tensor& scale, at::ScalarType out_dtype) {
  return {signature(kDequantizeFp8, backend, q, scale, static_cast<int64_t>(out_dtype)),
          {address(q), address(scale), 0, 0},
          q.device()};
}

Call<5, 1> dequantize_int8_call(c10::string_view backend, const at::Tensor& q,
                                const at::Tensor& scale, const at::Tensor& zero,
                                at::ScalarType out_dtype) {
  return {signature(kDequantizeInt8, backend, q, scale, zero, static_cast<int64_t>(out_dtype)),
          {address(q), address(scale), address(zero), 0, 0},
          q.device()};
}

const at::Tensor& value(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}

// A prepare op's answer, its outputs then the plan, as serve takes it.
template <class Tuple, size_t... I>
Prepared<sizeof...(I)> prepared(Tuple&& r, std::index_sequence<I...>) {
  return {{std::move(std::get<I>(r))...}, std::move(std::get<sizeof...(I)>(r))};
}
template <class... T>
Prepared<sizeof...(T) - 1> prepared(std::tuple<T...>&& r) {
  return prepared(std::move(r), std::make_index_sequence<sizeof...(T) - 1>{});
}

// serve's outputs as an op of several outputs returns them.
template <size_t N, size_t... I>
auto as_tuple(std::array<at::Tensor, N>&& outputs, std::index_sequence<I...>) {
  return std::make_tuple(std::move(outputs[I])...);
}
template <size_t N>
auto as_tuple(std::array<at::Tensor, N>&& outputs) {
  return as_tuple(std::move(outputs), std::make_index_sequence<N>{});
}

// The registered ops' CUDA implementations.

at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& act_scale, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, c10::string_view)>("lowbit::_fp8_linear_prepare");
  return serve("fp8_linear",
               fp8_linear_call(backend, x, weight, weight_scale, value(bias), value(act_scale)),
               [&] {
                 return prepared(prepare.call(x, weight, weight_scale, bias, act_scale, backend));
               })[0];
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& act_scale,
                       const std::optional<at::Tensor>& act_zero, bool act_symmetric,
                       c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool,
      c10::string_view)>("lowbit::_int8_linear_prepare");
  return serve("int8_linear",
               int8_linear_call(backend, x, weight, weight_scale, value(bias), value(act_scale),
                                value(act_zero), act_symmetric),
               [&] {
                 return prepared(prepare.call(x, weight, weight_scale, bias, act_scale, act_zero,
                                         act_symmetric, backend));
               })[0];
}

at::Tensor fp8_scaled_mm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                         const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                         at::ScalarType out_dtype, bool fast_accum, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const std::optional<at::Tensor>&, at::ScalarType, bool, c10::string_view)>(
      "lowbit::_fp8_scaled_mm_prepare");
  return serve("fp8_scaled_mm",
               fp8_scaled_mm_call(backend, a, b, a_scale, b_scale, value(bias), out_dtype,
                                  fast_accum),
               [&] {
                 return prepared(prepare.call(a, b, a_scale, b_scale, bias, out_dtype, fast_accum,
                                         backend));
               })[0];
}

std::tuple<at::Tensor, at::Tensor> quantize_fp8(const at::Tensor& x,
                                                const std::optional<at::Tensor>& scale,
                                                c10::string_view fmt,
                                                c10::string_view granularity,
                                                int64_t group_size, c10::IntArrayRef block,
                                                bool saturate, c10::string_view backend) {
  static const auto prepare =
      prepare_op<std::tuple<at::Tensor, at::Tensor, std::vector<int64_t>>(
          const at::Tensor&, const std::optional<at::Tensor>&, c10::string_view,
          c10::string_view, int64_t, c10::IntArrayRef, bool, c10::string_view)>(
          "lowbit::_quantize_fp8_prepare");
  return as_tuple(serve("quantize_fp8",
                        quantize_fp8_call(backend, x, value(scale), fmt, granularity,
                                          group_size, block, saturate),
                        [&] {
                          return prepared(prepare.call(x, scale, fmt, granularity, group_size,
                                                       block, saturate, backend));
                        }));
}

at::Tensor int8_mm(const at::Tensor& a, const at::Tensor& b, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, c10::string_view)>("lowbit::_int8_mm_prepare");
  return serve("int8_mm", int8_mm_call(backend, a, b),
               [&] { return prepared(prepare.call(a, b, backend)); })[0];
}

at::Tensor int8_gemm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& a_scale,
                     const at::Tensor& b_scale, const std::optional<at::Tensor>& bias,
                     at::ScalarType out_dtype, const std::optional<at::Tensor>& a_zero,
                     c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
      const std::optional<at::Tensor>&, at::ScalarType, const std::optional<at::Tensor>&,
      c10::string_view)>("lowbit::_int8_gemm_prepare");
  return serve("int8_gemm",
               int8_gemm_call(backend, a, b, a_scale, b_scale, value(bias), out_dtype,
                              value(a_zero)),
               [&] {
                 return prepared(prepare.call(a, b, a_scale, b_scale, bias, out_dtype, a_zero,
                                         backend));
               })[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> quantize_int8(
    const at::Tensor& x, const std::optional<at::Tensor>& scale,
    const std::optional<at::Tensor>& zero, c10::string_view granularity, int64_t group_size,
    c10::IntArrayRef block, bool symmetric, c10::string_view backend) {
  static const auto prepare =
      prepare_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>>(
          const at::Tensor&, const std::optional<at::Tensor>&,
          const std::optional<at::Tensor>&, c10::string_view, int64_t, c10::IntArrayRef, bool,
          c10::string_view)>("lowbit::_quantize_int8_prepare");
  return as_tuple(serve("quantize_int8",
                        quantize_int8_call(backend, x, value(scale), value(zero), granularity,
                                           group_size, block, symmetric),
                        [&] {
                          return prepared(prepare.call(x, scale, zero, granularity, group_size,
                                                       block, symmetric, backend));
                        }));
}

at::Tensor w4a16_gemm(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& scales,
                      const std::optional<at::Tensor>& zeros, int64_t group_size,
                      const std::optional<at::Tensor>& perm,
                      const std::optional<at::Tensor>& bias, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      int64_t, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&,
      c10::string_view)>("lowbit::_w4a16_gemm_prepare");
  return serve("w4a16_gemm",
               w4a16_gemm_call(backend, x, qweight, scales, value(zeros), group_size,
                               value(perm), value(bias)),
               [&] {
                 return prepared(prepare.call(x, qweight, scales, zeros, group_size, perm, bias,
                                         backend));
               })[0];
}

at::Tensor w8a16_gemm(const at::Tensor& x, const at::Tensor& w, const at::Tensor& w_scale,
                      const std::optional<at::Tensor>& bias, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      c10::string_view)>("lowbit::_w8a16_gemm_prepare");
  return serve("w8a16_gemm", w8a16_gemm_call(backend, x, w, w_scale, value(bias)),
               [&] { return prepared(prepare.call(x, w, w_scale, bias, backend)); })[0];
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> int4_quantize(const at::Tensor& w,
                                                             int64_t group_size, bool symmetric,
                                                             c10::string_view backend) {
  static const auto prepare =
      prepare_op<std::tuple<at::Tensor, at::Tensor, at::Tensor, std::vector<int64_t>>(
          const at::Tensor&, int64_t, bool, c10::string_view)>("lowbit::_int4_quantize_prepare");
  return as_tuple(serve("int4_quantize", int4_quantize_call(backend, w, group_size, symmetric),
                        [&] { return prepared(prepare.call(w, group_size, symmetric, backend)); }));
}

at::Tensor dequantize_fp8(const at::Tensor& q, const at::Tensor& scale,
                          at::ScalarType out_dtype, c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, at::ScalarType, c10::string_view)>(
      "lowbit::_dequantize_fp8_prepare");
  return serve("dequantize_fp8", dequantize_fp8_call(backend, q, scale, out_dtype),
               [&] { return prepared(prepare.call(q, scale, out_dtype, backend)); })[0];
}

at::Tensor dequantize_int8(const at::Tensor& q, const at::Tensor& scale,
                           const std::optional<at::Tensor>& zero, at::ScalarType out_dtype,
                           c10::string_view backend) {
  static const auto prepare = prepare_op<std::tuple<at::Tensor, std::vector<int64_t>>(
      const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, at::ScalarType,
      c10::string_view)>("lowbit::_dequantize_int8_prepare");
  return serve("dequantize_int8", dequantize_int8_call(backend, q, scale, value(zero), out_dtype),
               [&] { return prepared(prepare.call(q, scale, zero, out_dtype, backend)); })[0];
}

// ---------------------------------------------------------------------------------------------
// The entries from Python. The GIL is held throughout (a plan's launch takes microseconds),
// except while waiting for g_mutex (serve_entry).

PyObject* none() {
  if (PyErr_Occurred()) PyErr_Clear();  // (an argument parse that gave up)
  Py_RETURN_NONE;
}

PyObject* unseen() { Py_RETURN_NOTIMPLEMENTED; }

// Arguments as the entries take them; false: of another type (Python's path says what).
struct Args {
  PyObject* const* args;

  // The first tensor: exactly a torch.Tensor, on a CUDA device.
  bool cuda_input(int i, const at::Tensor*& out) const {
    if (Py_TYPE(args[i]) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return false;
    out = &THPVariable_Unpack(args[i]);
    return out->is_cuda();
  }
  bool tensor(int i, const at::Tensor*& out, bool optional = false) const {
    static const at::Tensor undefined;
    if (optional && args[i] == Py_None) {
      out = &undefined;
      return true;
    }
    if (!THPVariable_Check(args[i])) return false;
    out = &THPVariable_Unpack(args[i]);
    return true;
  }
  bool flag(int i, bool& out) const {
    out = args[i] == Py_True;
    return out || args[i] == Py_False;
  }
  bool integer(int i, int64_t& out) const {
    if (!PyLong_CheckExact(args[i])) return false;
    int overflow = 0;
    out = PyLong_AsLongLongAndOverflow(args[i], &overflow);
    return overflow == 0 && !(out == -1 && PyErr_Occurred());
  }
  bool string(int i, c10::string_view& out) const {
    if (!PyUnicode_CheckExact(args[i])) return false;
    Py_ssize_t size = 0;
    const char* s = PyUnicode_AsUTF8AndSize(args[i], &size);
    if (!s) return false;
    out = c10::string_view(s, static_cast<size_t>(size));
    return true;
  }
  bool dtype(int i, at::ScalarType& out) const {
    if (!THPDtype_Check(args[i])) return false;
    out = reinterpret_cast<THPDtype*>(args[i])->scalar_type;
    return true;
  }
  bool ints(int i, c10::SmallVector<int64_t, 4>& out) const {
    PyObject* seq = args[i];
    if (!PyList_CheckExact(seq) && !PyTuple_CheckExact(seq)) return false;
    const Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    PyObject** items = PySequence_Fast_ITEMS(seq);
    for (Py_ssize_t j = 0; j < n; ++j) {
      if (!PyLong_CheckExact(items[j])) return false;
      int overflow = 0;
      out.push_back(PyLong_AsLongLongAndOverflow(items[j], &overflow));
      if (overflow) return false;
    }
    return true;
  }
};

PyObject* wrap(std::array<at::Tensor, 1>&& outputs) {
  return THPVariable_Wrap(std::move(outputs[0]));
}

template <size_t N>
PyObject* wrap(std::array<at::Tensor, N>&& outputs) {
  PyObject* tuple = PyTuple_New(N);
  if (!tuple) return nullptr;
  for (size_t i = 0; i < N; ++i) {
    PyObject* t = outputs[i].defined() ? THPVariable_Wrap(std::move(outputs[i]))
                                       : (Py_INCREF(Py_None), Py_None);  // (run_locked's unused)
    if (!t) {
      Py_DECREF(tuple);
      return nullptr;
    }
    PyTuple_SET_ITEM(tuple, i, t);
  }
  return tuple;
}

// An entry's call: the plan's outputs, None ("no plan", no key, or a launch that declined the
// call), [step] (a plan that names a Python step, when `steps`), NotImplemented (unseen).
// `unused`: as run_locked's; such an output is None in the tuple.
template <size_t P, size_t N>
PyObject* serve_entry(const char* op, const Call<P, N>& call, bool steps = false,
                      uint32_t unused = 0) {
  if (!call.key) return none();
  std::array<at::Tensor, N> outputs;
  PyObject* step = nullptr;  // a new reference, once the plan names a Python step
  {
    // Never wait for g_mutex holding the GIL: a thread of the dispatcher path holds g_mutex
    // without the GIL, and its allocation may want the GIL (the caching allocator's Python
    // hooks, e.g. memory-history recording with Python stacks).
    std::unique_lock<std::mutex> lock(g_mutex, std::try_to_lock);
    if (!lock.owns_lock()) {
      Py_BEGIN_ALLOW_THREADS
      lock.lock();
      Py_END_ALLOW_THREADS
    }
    const Plan* plan = find_locked(*call.key);
    if (!plan) return unseen();
    if (!plan->launch) {
      if (!steps || !plan->step) return none();
      // Alive while its plan is (Python empties this table before it lets go of the steps):
      // a reference of our own, taken under the lock; the list is made after it, since an
      // allocation may run the garbage collector, whose finalizers may call an entry.
      step = plan->step;
      Py_INCREF(step);
    } else {
      auto served = run_locked(op, *plan, call, unused);
      if (!served) return none();
      g_hits.fetch_add(1, std::memory_order_relaxed);
      outputs = std::move(*served);
    }
  }
  if (step) {
    PyObject* list = PyList_New(1);
    if (!list) {
      Py_DECREF(step);
      return nullptr;
    }
    PyList_SET_ITEM(list, 0, step);
    return list;
  }
  return wrap(std::move(outputs));
}

bool arity(const char* fn, const char* params, Py_ssize_t want, Py_ssize_t nargs) {
  if (nargs == want) return true;
  PyErr_Format(PyExc_TypeError, "%s(%s) takes %zd arguments; got %zd", fn, params, want,
               nargs);
  return false;
}

// The modules' entries: their tensors as nn.Module's attribute lookup finds them (the
// instance dict, then _parameters, then _buffers); a tensor found elsewhere (e.g. a
// parametrization's property) sends the call to Python.
enum Name { kWeight, kWeightScale, kBias, kActScale, kActZero, kActSymmetric, kNameCount };
PyObject* g_names[kNameCount];  // interned, in the order of Name
PyObject* g_parameters = nullptr;
PyObject* g_buffers = nullptr;

PyObject* module_attr(PyObject* dict, PyObject* name) {
  if (PyObject* v = PyDict_GetItemWithError(dict, name)) return v;
  for (PyObject* where : {g_parameters, g_buffers}) {
    PyObject* d = PyDict_GetItemWithError(dict, where);
    if (d && PyDict_Check(d))
      if (PyObject* v = PyDict_GetItemWithError(d, name)) return v;
  }
  return nullptr;
}

// The module's tensors (None: an undefined tensor, for the optional ones) and the INT8 flag.
struct ModuleState {
  std::array<at::Tensor, 5> t;
  bool symmetric = true;
};

bool read_state(PyObject* module, int tensors, bool flag, ModuleState& st) {
  PyObject* dict = PyObject_GenericGetDict(module, nullptr);
  if (!dict) {
    PyErr_Clear();
    return false;
  }
  bool ok = true;
  for (int i = 0; ok && i < tensors; ++i) {
    PyObject* v = module_attr(dict, g_names[i]);
    const bool optional = i == kBias || i == kActScale || i == kActZero;
    if (v && THPVariable_Check(v))
      st.t[i] = THPVariable_Unpack(v);
    else
      ok = v == Py_None && optional;
  }
  if (ok && flag) {
    PyObject* v = module_attr(dict, g_names[kActSymmetric]);
    ok = v == Py_True || v == Py_False;
    st.symmetric = v == Py_True;
  }
  Py_DECREF(dict);
  if (PyErr_Occurred()) PyErr_Clear();
  return ok;
}

// fn(module, x) of an op whose module has `tensors` tensors (and the INT8 flag):
// make_call(x, state) -> its Call.
template <class MakeCall>
PyObject* module_entry(const char* fn, const char* op, int tensors, bool flag,
                       PyObject* const* args, Py_ssize_t nargs, MakeCall&& make_call) {
  if (!arity(fn, "module, x", 2, nargs)) return nullptr;
  const at::Tensor* x = nullptr;
  ModuleState st;
  if (!Args{args}.cuda_input(1, x) || !read_state(args[0], tensors, flag, st)) return none();
  return serve_entry(op, make_call(*x, st));
}

PyObject* fp8_linear_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return module_entry("fp8_linear_module", "fp8_linear", 4, false, args, nargs,
                      [](const at::Tensor& x, const ModuleState& s) {
                        return fp8_linear_call("default", x, s.t[kWeight], s.t[kWeightScale],
                                               s.t[kBias], s.t[kActScale]);
                      });
  END_HANDLE_TH_ERRORS
}

PyObject* int8_linear_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return module_entry("int8_linear_module", "int8_linear", 5, true, args, nargs,
                      [](const at::Tensor& x, const ModuleState& s) {
                        return int8_linear_call("default", x, s.t[kWeight], s.t[kWeightScale],
                                                s.t[kBias], s.t[kActScale], s.t[kActZero],
                                                s.symmetric);
                      });
  END_HANDLE_TH_ERRORS
}

// The eager API's entries: the registered op's arguments, positionally (lowbit/api.py).

PyObject* fp8_linear_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("fp8_linear", "x, weight, weight_scale, bias, act_scale, backend", 6, nargs))
    return nullptr;
  const Args a{args};
  const at::Tensor *x, *w, *ws, *b, *s;
  c10::string_view backend;
  if (!a.cuda_input(0, x) || !a.tensor(1, w) || !a.tensor(2, ws) || !a.tensor(3, b, true) ||
      !a.tensor(4, s, true) || !a.string(5, backend))
    return none();
  return serve_entry("fp8_linear", fp8_linear_call(backend, *x, *w, *ws, *b, *s));
  END_HANDLE_TH_ERRORS
}

PyObject* int8_linear_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("int8_linear",
             "x, weight, weight_scale, bias, act_scale, act_zero, act_symmetric, backend", 8,
             nargs))
    return nullptr;
  const Args a{args};
  const at::Tensor *x, *w, *ws, *b, *s, *z;
  bool symmetric;
  c10::string_view backend;
  if (!a.cuda_input(0, x) || !a.tensor(1, w) || !a.tensor(2, ws) || !a.tensor(3, b, true) ||
      !a.tensor(4, s, true) || !a.tensor(5, z, true) || !a.flag(6, symmetric) ||
      !a.string(7, backend))
    return none();
  return serve_entry("int8_linear",
                     int8_linear_call(backend, *x, *w, *ws, *b, *s, *z, symmetric));
  END_HANDLE_TH_ERRORS
}

PyObject* fp8_scaled_mm_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("fp8_scaled_mm", "a, b, a_scale, b_scale, bias, out_dtype, fast_accum, backend",
             8, nargs))
    return nullptr;
  const Args p{args};
  const at::Tensor *a, *b, *sa, *sb, *bias;
  at::ScalarType out_dtype;
  bool fast_accum;
  c10::string_view backend;
  if (!p.cuda_input(0, a) || !p.tensor(1, b) || !p.tensor(2, sa) || !p.tensor(3, sb) ||
      !p.tensor(4, bias, true) || !p.dtype(5, out_dtype) || !p.flag(6, fast_accum) ||
      !p.string(7, backend))
    return none();
  return serve_entry("fp8_scaled_mm", fp8_scaled_mm_call(backend, *a, *b, *sa, *sb, *bias,
                                                         out_dtype, fast_accum), true);
  END_HANDLE_TH_ERRORS
}

PyObject* quantize_fp8_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("quantize_fp8", "x, scale, fmt, granularity, group_size, block, saturate, backend",
             8, nargs))
    return nullptr;
  const Args a{args};
  const at::Tensor *x, *scale;
  c10::string_view fmt, granularity, backend;
  int64_t group_size;
  c10::SmallVector<int64_t, 4> block;
  bool saturate;
  if (!a.cuda_input(0, x) || !a.tensor(1, scale, true) || !a.string(2, fmt) ||
      !a.string(3, granularity) || !a.integer(4, group_size) || !a.ints(5, block) ||
      !a.flag(6, saturate) || !a.string(7, backend))
    return none();
  return serve_entry("quantize_fp8", quantize_fp8_call(backend, *x, *scale, fmt, granularity,
                                                       group_size, block, saturate), true);
  END_HANDLE_TH_ERRORS
}

PyObject* int8_mm_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("int8_mm", "a, b, backend", 3, nargs)) return nullptr;
  const Args p{args};
  const at::Tensor *a, *b;
  c10::string_view backend;
  if (!p.cuda_input(0, a) || !p.tensor(1, b) || !p.string(2, backend)) return none();
  return serve_entry("int8_mm", int8_mm_call(backend, *a, *b), true);
  END_HANDLE_TH_ERRORS
}

PyObject* int8_gemm_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("int8_gemm", "a, b, a_scale, b_scale, bias, out_dtype, a_zero, backend", 8,
             nargs))
    return nullptr;
  const Args p{args};
  const at::Tensor *a, *b, *sa, *sb, *bias, *za;
  at::ScalarType out_dtype;
  c10::string_view backend;
  if (!p.cuda_input(0, a) || !p.tensor(1, b) || !p.tensor(2, sa) || !p.tensor(3, sb) ||
      !p.tensor(4, bias, true) || !p.dtype(5, out_dtype) || !p.tensor(6, za, true) ||
      !p.string(7, backend))
    return none();
  return serve_entry("int8_gemm",
                     int8_gemm_call(backend, *a, *b, *sa, *sb, *bias, out_dtype, *za), true);
  END_HANDLE_TH_ERRORS
}

PyObject* quantize_int8_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("quantize_int8",
             "x, scale, zero, granularity, group_size, block, symmetric, backend", 8, nargs))
    return nullptr;
  const Args a{args};
  const at::Tensor *x, *scale, *zero;
  c10::string_view granularity, backend;
  int64_t group_size;
  c10::SmallVector<int64_t, 4> block;
  bool symmetric;
  if (!a.cuda_input(0, x) || !a.tensor(1, scale, true) || !a.tensor(2, zero, true) ||
      !a.string(3, granularity) || !a.integer(4, group_size) || !a.ints(5, block) ||
      !a.flag(6, symmetric) || !a.string(7, backend))
    return none();
  // (a symmetric quantizer's zero points: an empty tensor the eager API drops, not made)
  return serve_entry("quantize_int8", quantize_int8_call(backend, *x, *scale, *zero,
                                                         granularity, group_size, block,
                                                         symmetric), true, symmetric ? 4u : 0u);
  END_HANDLE_TH_ERRORS
}

PyObject* w4a16_gemm_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("w4a16_gemm", "x, qweight, scales, zeros, group_size, perm, bias, backend", 8,
             nargs))
    return nullptr;
  const Args a{args};
  const at::Tensor *x, *q, *s, *z, *perm, *bias;
  int64_t group_size;
  c10::string_view backend;
  if (!a.cuda_input(0, x) || !a.tensor(1, q) || !a.tensor(2, s) || !a.tensor(3, z, true) ||
      !a.integer(4, group_size) || !a.tensor(5, perm, true) || !a.tensor(6, bias, true) ||
      !a.string(7, backend))
    return none();
  return serve_entry("w4a16_gemm",
                     w4a16_gemm_call(backend, *x, *q, *s, *z, group_size, *perm, *bias), true);
  END_HANDLE_TH_ERRORS
}

PyObject* w8a16_gemm_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("w8a16_gemm", "x, w, w_scale, bias, backend", 5, nargs)) return nullptr;
  const Args a{args};
  const at::Tensor *x, *w, *s, *bias;
  c10::string_view backend;
  if (!a.cuda_input(0, x) || !a.tensor(1, w) || !a.tensor(2, s) || !a.tensor(3, bias, true) ||
      !a.string(4, backend))
    return none();
  return serve_entry("w8a16_gemm", w8a16_gemm_call(backend, *x, *w, *s, *bias), true);
  END_HANDLE_TH_ERRORS
}

PyObject* int4_quantize_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("int4_quantize", "w, group_size, symmetric, backend", 4, nargs)) return nullptr;
  const Args a{args};
  const at::Tensor* w;
  int64_t group_size;
  bool symmetric;
  c10::string_view backend;
  if (!a.cuda_input(0, w) || !a.integer(1, group_size) || !a.flag(2, symmetric) ||
      !a.string(3, backend))
    return none();
  return serve_entry("int4_quantize", int4_quantize_call(backend, *w, group_size, symmetric),
                     true, symmetric ? 4u : 0u);  // (as quantize_int8's zero points)
  END_HANDLE_TH_ERRORS
}

PyObject* dequantize_fp8_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("dequantize_fp8", "q, scale, out_dtype, backend", 4, nargs)) return nullptr;
  const Args a{args};
  const at::Tensor *q, *scale;
  at::ScalarType out_dtype;
  c10::string_view backend;
  if (!a.cuda_input(0, q) || !a.tensor(1, scale) || !a.dtype(2, out_dtype) ||
      !a.string(3, backend))
    return none();
  return serve_entry("dequantize_fp8", dequantize_fp8_call(backend, *q, *scale, out_dtype), true);
  END_HANDLE_TH_ERRORS
}

PyObject* dequantize_int8_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (!arity("dequantize_int8", "q, scale, zero, out_dtype, backend", 5, nargs)) return nullptr;
  const Args a{args};
  const at::Tensor *q, *scale, *zero;
  at::ScalarType out_dtype;
  c10::string_view backend;
  if (!a.cuda_input(0, q) || !a.tensor(1, scale) || !a.tensor(2, zero, true) ||
      !a.dtype(3, out_dtype) || !a.string(4, backend))
    return none();
  return serve_entry("dequantize_int8",
                     dequantize_int8_call(backend, *q, *scale, *zero, out_dtype), true);
  END_HANDLE_TH_ERRORS
}

// empty(device, dtype, *sizes) -> torch.empty(sizes, dtype=dtype, device=device), without
// torch's Python argument parser, which is most of torch.empty's 3.3 us a call (H100 host,
// bench/NOTES.md): the Triton kernels' launchers allocate their outputs and workspaces with
// it (triton_kernels/_common.py, ``allocator``).
PyObject* empty_entry(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  if (nargs < 2 || !THPDevice_Check(args[0]) || !THPDtype_Check(args[1])) {
    PyErr_SetString(PyExc_TypeError, "empty(device, dtype, *sizes): a torch.device and a "
                                     "torch.dtype, then the sizes");
    return nullptr;
  }
  c10::SmallVector<int64_t, 4> sizes;
  for (Py_ssize_t i = 2; i < nargs; ++i) {
    const long long v = PyLong_AsLongLong(args[i]);
    if (v == -1 && PyErr_Occurred()) return nullptr;
    if (v < 0) {
      PyErr_Format(PyExc_ValueError, "empty: size %zd is negative (%lld)", i - 2, v);
      return nullptr;
    }
    sizes.push_back(v);
  }
  const at::TensorOptions options = at::TensorOptions()
                                        .dtype(reinterpret_cast<THPDtype*>(args[1])->scalar_type)
                                        .device(reinterpret_cast<THPDevice*>(args[0])->device);
  return THPVariable_Wrap(at::empty(sizes, options));
  END_HANDLE_TH_ERRORS
}

#define LOWBIT_FASTCALL(f) reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&f))

PyMethodDef g_methods[] = {
    {"fp8_linear_module", LOWBIT_FASTCALL(fp8_linear_module), METH_FASTCALL,
     "fp8_linear_module(module, x): Fp8Linear's forward when a plan serves it"},
    {"int8_linear_module", LOWBIT_FASTCALL(int8_linear_module), METH_FASTCALL,
     "int8_linear_module(module, x): Int8Linear's forward when a plan serves it"},
    {"fp8_linear", LOWBIT_FASTCALL(fp8_linear_entry), METH_FASTCALL,
     "lowbit::fp8_linear's arguments -> its output when a plan serves it"},
    {"int8_linear", LOWBIT_FASTCALL(int8_linear_entry), METH_FASTCALL,
     "lowbit::int8_linear's arguments -> its output when a plan serves it"},
    {"fp8_scaled_mm", LOWBIT_FASTCALL(fp8_scaled_mm_entry), METH_FASTCALL,
     "lowbit::fp8_scaled_mm's arguments -> its output when a plan serves it"},
    {"quantize_fp8", LOWBIT_FASTCALL(quantize_fp8_entry), METH_FASTCALL,
     "lowbit::quantize_fp8's arguments -> (q, scale) when a plan serves it"},
    {"int8_mm", LOWBIT_FASTCALL(int8_mm_entry), METH_FASTCALL,
     "lowbit::int8_mm's arguments -> its output when a plan serves it"},
    {"int8_gemm", LOWBIT_FASTCALL(int8_gemm_entry), METH_FASTCALL,
     "lowbit::int8_gemm's arguments -> its output when a plan serves it"},
    {"quantize_int8", LOWBIT_FASTCALL(quantize_int8_entry), METH_FASTCALL,
     "lowbit::quantize_int8's arguments -> (q, scale, zero) when a plan serves it"},
    {"w4a16_gemm", LOWBIT_FASTCALL(w4a16_gemm_entry), METH_FASTCALL,
     "lowbit::w4a16_gemm's arguments -> its output when a plan serves it"},
    {"w8a16_gemm", LOWBIT_FASTCALL(w8a16_gemm_entry), METH_FASTCALL,
     "lowbit::w8a16_gemm's arguments -> its output when a plan serves it"},
    {"int4_quantize", LOWBIT_FASTCALL(int4_quantize_entry), METH_FASTCALL,
     "lowbit::int4_quantize's arguments -> (q, scales, zeros) when a plan serves it"},
    {"dequantize_fp8", LOWBIT_FASTCALL(dequantize_fp8_entry), METH_FASTCALL,
     "lowbit::dequantize_fp8's arguments -> its output when a plan serves it"},
    {"dequantize_int8", LOWBIT_FASTCALL(dequantize_int8_entry), METH_FASTCALL,
     "lowbit::dequantize_int8's arguments -> its output when a plan serves it"},
    {"empty", LOWBIT_FASTCALL(empty_entry), METH_FASTCALL,
     "empty(device, dtype, *sizes): torch.empty(sizes, dtype=dtype, device=device)"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef g_module = {PyModuleDef_HEAD_INIT, "_torch_ops",
                        "lowbit's registered ops in C++ (csrc/torch/plans.cpp)", -1, g_methods,
                        nullptr, nullptr, nullptr, nullptr};

}  // namespace

TORCH_LIBRARY_IMPL(lowbit, CUDA, m) {
  m.impl("fp8_linear", &fp8_linear);
  m.impl("int8_linear", &int8_linear);
  m.impl("fp8_scaled_mm", &fp8_scaled_mm);
  m.impl("quantize_fp8", &quantize_fp8);
  m.impl("int8_mm", &int8_mm);
  m.impl("int8_gemm", &int8_gemm);
  m.impl("quantize_int8", &quantize_int8);
  m.impl("w4a16_gemm", &w4a16_gemm);
  m.impl("w8a16_gemm", &w8a16_gemm);
  m.impl("int4_quantize", &int4_quantize);
  m.impl("dequantize_fp8", &dequantize_fp8);
  m.impl("dequantize_int8", &dequantize_int8);
}

PyMODINIT_FUNC PyInit__torch_ops() {
  static const char* kNames[] = {"weight",   "weight_scale", "bias",         "act_scale",
                                 "act_zero", "act_symmetric"};
  for (int i = 0; i < kNameCount; ++i)
    if (!(g_names[i] = PyUnicode_InternFromString(kNames[i]))) return nullptr;
  if (!(g_parameters = PyUnicode_InternFromString("_parameters")) ||
      !(g_buffers = PyUnicode_InternFromString("_buffers")))
    return nullptr;
  PyObject* module = PyModule_Create(&g_module);
  // lowbit/_native.py loads a library of its own plan format only (a stale build is refused).
  if (module && PyModule_AddIntConstant(module, "PLAN_FORMAT", kPlanFormat) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}

// Control from lowbit/_native.py (ctypes).
extern "C" {
// Adds `delta` to the hold count (Python blocks that the plans cannot see); returns it.
int64_t lowbit_native_hold(int64_t delta) { return g_hold.fetch_add(delta) + delta; }

// Forgets every plan, and every plan being prepared: once this returns, no launch object
// handed over before is used again.
void lowbit_native_reset() {
  std::lock_guard<std::mutex> lock(g_mutex);
  g_plans.clear();
  ++g_epoch;
}

// [plans kept, calls served by a plan, calls that went to Python, hold count]
void lowbit_native_stats(int64_t* out) {
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    out[0] = static_cast<int64_t>(g_plans.size());
  }
  out[1] = g_hits.load();
  out[2] = g_misses.load();
  out[3] = g_hold.load();
}
}
