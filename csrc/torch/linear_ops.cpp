// lowbit._torch_ops: the CUDA implementations of the registered ops lowbit::fp8_linear and
// lowbit::int8_linear, in C++, so that a call through the torch dispatcher (what a compiled
// graph makes once per quantized layer, and torch.ops.lowbit.<op>) costs no Python.
//
// The Python layer stays the source of truth: a call whose argument signature this library
// has not seen goes to lowbit::_<op>_prepare (lowbit/_native.py), which checks the arguments,
// runs the two checked ops and returns the output with a *plan*: the prepared launch object of
// lowbit._C that fuses the quantizer and the GEMM (lowbit/backends/cuda/linear.py) and what a
// call needs besides the pointers. Later calls of that signature allocate the output and the
// workspace and call the plan's launch, with no Python. The signature holds everything the
// checks and the kernel choice read of the arguments: each tensor's sizes, strides, dtype,
// device and data-pointer alignment, the backend argument, and the environment switches the
// choice reads. What Python holds in context variables (lowbit.use_backend, lowbit.explain)
// is not visible here: while any such block is open, Python holds the plans off
// (lowbit_native_hold) and every call takes the Python path. Python empties the table
// when a kernel registration changes what the choices would be (lowbit_native_reset).
// Asymmetric INT8 activations get no plan (their GEMM reads the weight's row sums, which a
// plan would have to keep per weight, also across CUDA-graph pools): they take the Python
// path.
//
// Modules reach the same plans with no dispatcher (lowbit/nn/_layer.py): the Python functions
// fp8_linear_module(module, x) and int8_linear_module(module, x) of this extension read the
// module's tensors as nn.Module's attribute lookup finds them and return the output when a
// plan serves the signature, None when the module's Python path must serve it (no plan can:
// a Triton kernel, asymmetric INT8, a held or CPU call, a tensor subclass), or NotImplemented
// when the signature is unseen (the module then checks x and calls the registered op, which
// prepares the plan). A signature Python found no plan for is kept as such ("no plan"), so
// that its module calls go straight to Python; calls through the dispatcher still go to the
// prepare op, which serves them from Python's own steps.
//
// This file includes torch headers and links against the torch it was built with
// (lowbit/_native.py loads it only under that torch version); lowbit._C does neither. The two
// share no C++ types: a plan's launch is a plain function of lowbit._C taking the launch
// object's address (bindings.cpp, "native").
#include <Python.h>

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/ops/empty.h>
#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>
#include <torch/csrc/Exceptions.h>
#include <torch/csrc/autograd/python_variable.h>
#include <torch/library.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

namespace {

using Launch = int (*)(void* self, const uintptr_t* pointers, uintptr_t stream, char* error,
                       size_t error_size);

// The plan list lowbit/_native.py returns: [kPlanFormat, launch, self, workspace bytes, N];
// launch 0 for "no plan" (Python's step of the signature is not one fused launch), or an
// empty list when Python could not tell (nothing is kept then).
constexpr int64_t kPlanFormat = 2;
constexpr size_t kPlanLength = 5;
// Signatures kept; a full table is emptied (Python keeps the launch objects alive).
constexpr size_t kMaxPlans = 4096;

struct Plan {
  Launch launch = nullptr;  // nullptr: "no plan", Python serves the signature
  void* self = nullptr;
  int64_t workspace_bytes = 0;
  int64_t n = 0;
};

struct Key {
  std::vector<int64_t> v;
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
// for the default backend); a change empties the table.
constexpr const char* kEnvSwitches[] = {"LOWBIT_BACKEND", "LOWBIT_ARCH", "TRITON_INTERPRET",
                                        "LOWBIT_CHECK_SCALES"};

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
std::atomic<int64_t> g_hold{0};
uint64_t g_epoch = 0;  // bumped by every reset (under g_mutex)
std::atomic<int64_t> g_hits{0}, g_misses{0};

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
  const int64_t dim = t.dim();
  key.v.push_back(dim);
  for (int64_t s : t.sizes()) key.v.push_back(s);
  for (int64_t s : t.strides()) key.v.push_back(s);
  key.v.push_back(static_cast<int64_t>(t.scalar_type()));
  key.v.push_back(static_cast<int64_t>(t.device().type()));
  key.v.push_back(t.device().index());
  key.v.push_back(static_cast<int64_t>(reinterpret_cast<uintptr_t>(t.data_ptr()) % 16));
}

// The key of a call, or nullopt when no plan may serve it (Python holds them off, or a
// backend name Python will reject).
template <class... Tensors>
std::optional<Key> signature(int op, c10::string_view backend, int64_t flag,
                             const Tensors&... tensors) {
  if (g_hold.load(std::memory_order_relaxed) != 0) return std::nullopt;
  const int b = backend_code(backend);
  if (b < 0) return std::nullopt;
  Key key;
  key.v.reserve(48);
  key.v.push_back(op);
  key.v.push_back(b);
  key.v.push_back(flag);
  (add(key, tensors), ...);
  return key;
}

// The plan of `key`, after emptying the table if the environment switches changed. Called
// with g_mutex held: a plan's launch object lives until Python empties the table, which
// takes the mutex first (lowbit_native_reset).
const Plan* find_locked(const Key& key, const std::string& env) {
  if (env != g_environment) {
    g_plans.clear();
    g_environment = env;
    return nullptr;
  }
  auto it = g_plans.find(key);
  return it == g_plans.end() ? nullptr : &it->second;
}

// Keeps the plan Python returned for `key`, unless the table was reset (a kernel
// registration) or the environment switches changed while Python prepared it: `epoch` and
// `env` are what they were before the call.
void remember(const std::optional<Key>& key, const std::vector<int64_t>& plan, uint64_t epoch,
              const std::string& env) {
  if (!key || plan.empty() || g_hold.load() != 0) return;
  TORCH_CHECK(plan.size() == kPlanLength && plan[0] == kPlanFormat,
              "lowbit: a plan from lowbit/_native.py of an unknown format");
  Plan p;  // plan[1] == 0: "no plan"
  p.launch = reinterpret_cast<Launch>(static_cast<uintptr_t>(plan[1]));
  p.self = reinterpret_cast<void*>(static_cast<uintptr_t>(plan[2]));
  p.workspace_bytes = plan[3];
  p.n = plan[4];
  std::lock_guard<std::mutex> lock(g_mutex);
  if (epoch != g_epoch || env != g_environment) return;
  if (g_plans.size() >= kMaxPlans) g_plans.clear();
  g_plans.emplace(*key, p);
}

uintptr_t address(const at::Tensor& t) {
  return t.defined() ? reinterpret_cast<uintptr_t>(t.data_ptr()) : 0;
}

// Allocates the output [..., N] in x's dtype and the workspace, then makes the plan's launch
// on x's device's current stream, with g_mutex held: launch objects keep per-call state, and
// a reset (which takes the mutex) must not free one in use. `pointers` holds the launch's
// pointer arguments with the workspace and output slots (the last two) left to fill.
template <size_t P>
at::Tensor run_locked(const char* op, const Plan& plan, const at::Tensor& x,
                      std::array<uintptr_t, P> pointers) {
  c10::DeviceGuard guard(x.device());
  c10::SmallVector<int64_t, 8> sizes(x.sizes().begin(), x.sizes().end());
  sizes.back() = plan.n;
  at::Tensor out = at::empty(sizes, x.options());
  at::Tensor workspace = at::empty({plan.workspace_bytes}, x.options().dtype(at::kByte));
  const auto* impl = c10::impl::getDeviceGuardImpl(x.device().type());
  const uintptr_t stream =
      reinterpret_cast<uintptr_t>(impl->getStreamNativeHandle(impl->getStream(x.device())));
  pointers[P - 2] = address(workspace);
  pointers[P - 1] = address(out);
  char error[512] = {0};
  const int rc = plan.launch(plan.self, pointers.data(), stream, error, sizeof error);
  TORCH_CHECK(rc == 0, "lowbit::", op, ": ", error);
  return out;
}

template <class Signature>
c10::TypedOperatorHandle<Signature> prepare_op(const char* name) {
  return c10::Dispatcher::singleton().findSchemaOrThrow(name, "").typed<Signature>();
}

using Prepared = std::tuple<at::Tensor, std::vector<int64_t>>;

// A call of a family: the key of its signature and its launch's pointer arguments (the
// workspace and output slots left to fill), the same for the op and the module entry.
template <size_t P>
struct Call {
  std::optional<Key> key;
  std::array<uintptr_t, P> pointers;
};

// One call: the plan kept for `key` when there is one, else `prepare()` (the Python
// implementation), whose plan is kept for the next call of this signature.
template <size_t P, class Prepare>
at::Tensor serve(const char* op, const Call<P>& call, const at::Tensor& x, Prepare&& prepare) {
  const std::optional<Key>& key = call.key;
  std::string env = environment();
  uint64_t epoch;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    if (key) {
      const Plan* plan = find_locked(*key, env);
      if (plan && plan->launch) {
        g_hits.fetch_add(1, std::memory_order_relaxed);
        return run_locked(op, *plan, x, call.pointers);
      }
    }
    epoch = g_epoch;
  }
  g_misses.fetch_add(1, std::memory_order_relaxed);
  auto [out, plan] = prepare();
  remember(key, plan, epoch, env);
  return out;
}

Call<7> fp8_call(c10::string_view backend, const at::Tensor& x, const at::Tensor& weight,
                 const at::Tensor& weight_scale, const at::Tensor& bias,
                 const at::Tensor& act_scale) {
  return {signature(0, backend, 0, x, weight, weight_scale, bias, act_scale),
          {address(x), address(act_scale), address(weight), address(weight_scale),
           address(bias), 0, 0}};
}

Call<9> int8_call(c10::string_view backend, const at::Tensor& x, const at::Tensor& weight,
                  const at::Tensor& weight_scale, const at::Tensor& bias,
                  const at::Tensor& act_scale, const at::Tensor& act_zero, bool act_symmetric) {
  return {signature(1, backend, act_symmetric, x, weight, weight_scale, bias, act_scale,
                    act_zero),
          {address(x), address(act_scale), address(act_zero), address(weight),
           address(weight_scale), 0, address(bias), 0, 0}};
}

const at::Tensor& value(const std::optional<at::Tensor>& t) {
  static const at::Tensor undefined;
  return t.has_value() ? *t : undefined;
}

at::Tensor fp8_linear(const at::Tensor& x, const at::Tensor& weight,
                      const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                      const std::optional<at::Tensor>& act_scale, c10::string_view backend) {
  static const auto prepare = prepare_op<Prepared(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, c10::string_view)>("lowbit::_fp8_linear_prepare");
  return serve("fp8_linear",
               fp8_call(backend, x, weight, weight_scale, value(bias), value(act_scale)), x,
               [&] { return prepare.call(x, weight, weight_scale, bias, act_scale, backend); });
}

at::Tensor int8_linear(const at::Tensor& x, const at::Tensor& weight,
                       const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                       const std::optional<at::Tensor>& act_scale,
                       const std::optional<at::Tensor>& act_zero, bool act_symmetric,
                       c10::string_view backend) {
  static const auto prepare = prepare_op<Prepared(
      const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&,
      const std::optional<at::Tensor>&, const std::optional<at::Tensor>&, bool,
      c10::string_view)>("lowbit::_int8_linear_prepare");
  return serve("int8_linear",
               int8_call(backend, x, weight, weight_scale, value(bias), value(act_scale),
                         value(act_zero), act_symmetric),
               x, [&] {
                 return prepare.call(x, weight, weight_scale, bias, act_scale, act_zero,
                                     act_symmetric, backend);
               });
}

// ---------------------------------------------------------------------------------------------
// The module entry (Python functions of this extension; the GIL is held throughout: a plan's
// launch takes microseconds, and the threads that hold g_mutex never wait for the GIL).

PyObject* g_names[6];  // interned attribute names, in the order of Name
enum Name { kWeight, kWeightScale, kBias, kActScale, kActZero, kActSymmetric, kNameCount };
PyObject* g_parameters = nullptr;
PyObject* g_buffers = nullptr;

// The module's attribute `name` as nn.Module's lookup finds it (the instance dict, then
// _parameters, then _buffers), borrowed; nullptr when it lives elsewhere (e.g. a
// parametrization's property), which sends the call to Python.
PyObject* module_attr(PyObject* dict, PyObject* name) {
  if (PyObject* v = PyDict_GetItemWithError(dict, name)) return v;
  for (PyObject* where : {g_parameters, g_buffers}) {
    PyObject* d = PyDict_GetItemWithError(dict, where);
    if (d && PyDict_Check(d))
      if (PyObject* v = PyDict_GetItemWithError(d, name)) return v;
  }
  return nullptr;
}

// The module's tensors (a None attribute: an undefined tensor, for the optional ones) and the
// INT8 flag; false when one is missing or of another type (Python's path then says what).
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

// x as the plans take it (exactly a torch.Tensor, on a CUDA device), else nullptr.
const at::Tensor* cuda_input(PyObject* x) {
  if (Py_TYPE(x) != reinterpret_cast<PyTypeObject*>(THPVariableClass)) return nullptr;
  const at::Tensor& t = THPVariable_Unpack(x);
  return t.is_cuda() ? &t : nullptr;
}

PyObject* none() { Py_RETURN_NONE; }

PyObject* unseen() { Py_RETURN_NOTIMPLEMENTED; }

// A module call: the plan's output, None ("no plan", or no key), NotImplemented (unseen).
template <size_t P>
PyObject* serve_module(const char* op, const Call<P>& call, const at::Tensor& x) {
  if (!call.key) return none();
  const std::string env = environment();
  at::Tensor out;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    const Plan* plan = find_locked(*call.key, env);
    if (!plan) return unseen();
    if (!plan->launch) return none();
    g_hits.fetch_add(1, std::memory_order_relaxed);
    out = run_locked(op, *plan, x, call.pointers);
  }
  return THPVariable_Wrap(std::move(out));
}

// fn(module, x) of family `op`, whose module has `tensors` tensors (and the INT8 flag):
// make_call(x, state) -> its Call.
template <class MakeCall>
PyObject* module_entry(const char* fn, const char* op, int tensors, bool flag,
                       PyObject* const* args, Py_ssize_t nargs, MakeCall&& make_call) {
  if (nargs != 2) {
    PyErr_Format(PyExc_TypeError, "%s(module, x) takes 2 arguments; got %zd", fn, nargs);
    return nullptr;
  }
  const at::Tensor* x = cuda_input(args[1]);
  ModuleState st;
  if (!x || !read_state(args[0], tensors, flag, st)) return none();
  return serve_module(op, make_call(*x, st), *x);
}

PyObject* fp8_linear_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return module_entry("fp8_linear_module", "fp8_linear", 4, false, args, nargs,
                      [](const at::Tensor& x, const ModuleState& s) {
                        return fp8_call("default", x, s.t[kWeight], s.t[kWeightScale],
                                        s.t[kBias], s.t[kActScale]);
                      });
  END_HANDLE_TH_ERRORS
}

PyObject* int8_linear_module(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  HANDLE_TH_ERRORS
  return module_entry("int8_linear_module", "int8_linear", 5, true, args, nargs,
                      [](const at::Tensor& x, const ModuleState& s) {
                        return int8_call("default", x, s.t[kWeight], s.t[kWeightScale],
                                         s.t[kBias], s.t[kActScale], s.t[kActZero],
                                         s.symmetric);
                      });
  END_HANDLE_TH_ERRORS
}

PyMethodDef g_methods[] = {
    {"fp8_linear_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                              &fp8_linear_module)),
     METH_FASTCALL,
     "fp8_linear_module(module, x) -> the output when a plan serves it, None when the "
     "module's Python path must, NotImplemented for an unseen signature"},
    {"int8_linear_module", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(
                               &int8_linear_module)),
     METH_FASTCALL, "int8_linear_module(module, x): as fp8_linear_module"},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef g_module = {PyModuleDef_HEAD_INIT, "_torch_ops",
                        "lowbit's registered linear ops in C++ (csrc/torch/linear_ops.cpp)", -1,
                        g_methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__torch_ops() {
  static const char* kNames[] = {"weight",   "weight_scale", "bias",         "act_scale",
                                 "act_zero", "act_symmetric"};
  for (int i = 0; i < kNameCount; ++i)
    if (!(g_names[i] = PyUnicode_InternFromString(kNames[i]))) return nullptr;
  if (!(g_parameters = PyUnicode_InternFromString("_parameters")) ||
      !(g_buffers = PyUnicode_InternFromString("_buffers")))
    return nullptr;
  return PyModule_Create(&g_module);
}

TORCH_LIBRARY_IMPL(lowbit, CUDA, m) {
  m.impl("fp8_linear", &fp8_linear);
  m.impl("int8_linear", &int8_linear);
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
