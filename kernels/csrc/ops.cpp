// primeflow._C: registers the CPU ops as torch.ops.primeflow.* and makes the library importable as a
// Python module (`import primeflow._C` loads it; the ops are then reached through torch.ops).
//
// The Python wrappers in primeflow.kernels validate arguments with messages that name them; the checks here
// are the last line of defence for direct torch.ops calls.
#include <Python.h>

#include <algorithm>
#include <cstdlib>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "token_logprobs_kernel.h"

namespace primeflow {

#define PRIMEFLOW_DECLARE_LEVEL(level)                                      \
  namespace level {                                                         \
  void token_logprobs_forward(const at::Tensor&, const at::Tensor&, double, \
                              const TokenLogprobsForwardOut&);              \
  void token_logprobs_backward(const at::Tensor&, const at::Tensor*,        \
                               const at::Tensor&, const at::Tensor&,        \
                               const at::Tensor&, const at::Tensor&,        \
                               const at::Tensor*, double, at::Tensor&);     \
  }

PRIMEFLOW_DECLARE_LEVEL(DEFAULT)
PRIMEFLOW_DECLARE_LEVEL(AVX2)
PRIMEFLOW_DECLARE_LEVEL(AVX512)

#undef PRIMEFLOW_DECLARE_LEVEL

namespace {

// The widest SIMD level this CPU runs, chosen once. The kernels are compiled for each level (CMakeLists.txt).
enum class SimdLevel { kDefault, kAvx2, kAvx512 };

SimdLevel detect_simd_level() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")) {
    return SimdLevel::kAvx512;
  }
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SimdLevel::kAvx2;
#endif
  return SimdLevel::kDefault;
}

// ATEN_CPU_CAPABILITY (ATen's own switch: default | avx2 | avx512) caps the level, so one variable forces
// ATen's kernels and ours onto the same code path: that is how the tests' exactness claims are checked on
// the AVX2 path of an AVX-512 host. A level above what the CPU runs, or an unknown name, is ignored.
SimdLevel simd_level_cap() {
  const char* requested = std::getenv("ATEN_CPU_CAPABILITY");
  if (requested == nullptr) return SimdLevel::kAvx512;
  const std::string name(requested);
  if (name == "default") return SimdLevel::kDefault;
  if (name == "avx2") return SimdLevel::kAvx2;
  return SimdLevel::kAvx512;
}

SimdLevel simd_level() {
  static const SimdLevel level = std::min(detect_simd_level(), simd_level_cap());
  return level;
}

void check_inputs(const at::Tensor& logits_NV, const at::Tensor& labels_N, double temperature) {
  TORCH_CHECK(logits_NV.device().is_cpu(), "logits must be a CPU tensor");
  TORCH_CHECK(logits_NV.dim() == 2, "logits must be 2-D [N, V], got ", logits_NV.sizes());
  const auto dtype = logits_NV.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || dtype == at::kHalf,
              "logits must be float32, bfloat16 or float16, got ", dtype);
  TORCH_CHECK(logits_NV.is_contiguous(), "logits must be contiguous");
  TORCH_CHECK(labels_N.scalar_type() == at::kLong && labels_N.dim() == 1 &&
                  labels_N.size(0) == logits_NV.size(0) && labels_N.is_contiguous(),
              "labels must be a contiguous int64 tensor of shape [N]");
  TORCH_CHECK(temperature > 0 && std::isfinite(temperature), "temperature must be finite and > 0");
  if (labels_N.numel() > 0) {
    TORCH_CHECK(labels_N.min().item<int64_t>() >= 0 && labels_N.max().item<int64_t>() < logits_NV.size(1),
                "labels must lie in [0, V)");
  }
  TORCH_CHECK(logits_NV.size(1) > 0 || logits_NV.size(0) == 0, "logits must have at least one column");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> token_logprobs_fwd(
    const at::Tensor& logits_NV, const at::Tensor& labels_N, double temperature, bool with_entropy) {
  check_inputs(logits_NV, labels_N, temperature);
  const int64_t N = logits_NV.size(0);
  const auto f32 = logits_NV.options().dtype(at::kFloat);
  TokenLogprobsForwardOut out{at::empty({N}, f32), at::empty({N}, f32), at::empty({N}, f32),
                              with_entropy ? at::empty({N}, f32) : at::Tensor()};
  switch (simd_level()) {
    case SimdLevel::kAvx512: AVX512::token_logprobs_forward(logits_NV, labels_N, temperature, out); break;
    case SimdLevel::kAvx2: AVX2::token_logprobs_forward(logits_NV, labels_N, temperature, out); break;
    default: DEFAULT::token_logprobs_forward(logits_NV, labels_N, temperature, out);
  }
  return {out.logp_N, out.max_N, out.log_sum_N, with_entropy ? out.entropy_N : at::empty({0}, f32)};
}

at::Tensor token_logprobs_bwd(const at::Tensor& grad_logp_N, const std::optional<at::Tensor>& grad_entropy_N,
                              const at::Tensor& logits_NV, const at::Tensor& labels_N, const at::Tensor& max_N,
                              const at::Tensor& log_sum_N, const std::optional<at::Tensor>& entropy_N,
                              double temperature) {
  check_inputs(logits_NV, labels_N, temperature);
  const int64_t N = logits_NV.size(0);
  auto check_row_vector = [N](const at::Tensor& t, const char* name) {
    TORCH_CHECK(t.scalar_type() == at::kFloat && t.dim() == 1 && t.size(0) == N && t.is_contiguous(), name,
                " must be a contiguous float32 tensor of shape [N]");
  };
  check_row_vector(grad_logp_N, "grad_logp");
  check_row_vector(max_N, "max");
  check_row_vector(log_sum_N, "log_sum");
  TORCH_CHECK(grad_entropy_N.has_value() == entropy_N.has_value(),
              "grad_entropy and entropy must be given together");
  const at::Tensor* grad_entropy = nullptr;
  const at::Tensor* entropy = nullptr;
  if (grad_entropy_N.has_value()) {
    check_row_vector(*grad_entropy_N, "grad_entropy");
    check_row_vector(*entropy_N, "entropy");
    grad_entropy = &*grad_entropy_N;
    entropy = &*entropy_N;
  }
  at::Tensor grad_logits_NV = at::empty_like(logits_NV);
  switch (simd_level()) {
    case SimdLevel::kAvx512:
      AVX512::token_logprobs_backward(grad_logp_N, grad_entropy, logits_NV, labels_N, max_N, log_sum_N, entropy,
                                      temperature, grad_logits_NV);
      break;
    case SimdLevel::kAvx2:
      AVX2::token_logprobs_backward(grad_logp_N, grad_entropy, logits_NV, labels_N, max_N, log_sum_N, entropy,
                                    temperature, grad_logits_NV);
      break;
    default:
      DEFAULT::token_logprobs_backward(grad_logp_N, grad_entropy, logits_NV, labels_N, max_N, log_sum_N, entropy,
                                       temperature, grad_logits_NV);
  }
  return grad_logits_NV;
}

std::string simd_level_name() {
  switch (simd_level()) {
    case SimdLevel::kAvx512: return "avx512";
    case SimdLevel::kAvx2: return "avx2";
    default: return "default";
  }
}

}  // namespace

TORCH_LIBRARY(primeflow, m) {
  m.def("token_logprobs_fwd(Tensor logits, Tensor labels, float temperature, bool with_entropy)"
        " -> (Tensor logp, Tensor max, Tensor log_sum, Tensor entropy)");
  m.def("token_logprobs_bwd(Tensor grad_logp, Tensor? grad_entropy, Tensor logits, Tensor labels, Tensor max,"
        " Tensor log_sum, Tensor? entropy, float temperature) -> Tensor");
  m.def("simd_level() -> str", &simd_level_name);
}

TORCH_LIBRARY_IMPL(primeflow, CPU, m) {
  m.impl("token_logprobs_fwd", &token_logprobs_fwd);
  m.impl("token_logprobs_bwd", &token_logprobs_bwd);
}

}  // namespace primeflow

// A Python module with no functions: importing it runs the static registrations above.
extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "primeflow C++ CPU ops (torch.ops.primeflow)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
