// Token log-probs on CPU with at::vec SIMD: one streaming pass per row in the forward, one in the backward.
//
// This file is compiled once per SIMD level with -DCPU_CAPABILITY=<level> (CMakeLists.txt). at::vec puts
// its types in `inline namespace CPU_CAPABILITY`, and so do we, so the copies never collide.
//
// Forward, per row (x = logits in fp32, z = x / T):
//   The row is streamed in blocks of kBlock elements. A block's max is taken first (the block is then in
//   L1), the running sums are rescaled once per block if the max grew, and exp(z - max) is accumulated.
//   Each element is read from memory once and exponentiated once; there is one extra exp per block.
//   With d_j = (x_j - max) / T (max of the raw logits; T > 0 keeps the argmax):
//     sum_exp  = sum_j exp(d_j)
//     sum_expd = sum_j exp(d_j) * d_j                     (only with entropy)
//   When the max moves from m to m' (delta = (m - m') / T <= 0):
//     sum_exp' = e^delta * sum_exp,   sum_expd' = e^delta * (sum_expd + delta * sum_exp).
//   Results: log_sum = log(sum_exp), logp = d_label - log_sum, entropy = log_sum - sum_expd / sum_exp,
//   and lse(z) = max / T + log_sum.
//   Writing everything relative to the running max keeps +1e4 offsets from cancelling.
//   -inf columns contribute 0 (padding). A NaN or +inf anywhere in the row makes the row's outputs NaN,
//   as log_softmax does; it is tracked explicitly because SIMD max/min instructions drop NaNs.
//
// Backward, per row:  with log p_j = d_j - log_sum and p_j = exp(log p_j),
//   dL/dz_j = g_logp * ([j == label] - p_j) - g_ent * p_j * (log p_j + H),   dL/dx_j = dL/dz_j / T.
#include "token_logprobs_kernel.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/functional.h>
#include <ATen/cpu/vec/vec.h>

#include <cmath>
#include <limits>

namespace primeflow {
inline namespace CPU_CAPABILITY {

using at::vec::Vectorized;
using fVec = Vectorized<float>;

constexpr int64_t kVec = fVec::size();
// 512 fp32 elements = 2 KiB (1 KiB for bf16): small enough to stay in L1 between the max and the sum.
constexpr int64_t kBlock = 512;
static_assert(kBlock % kVec == 0, "block must hold whole vectors");

template <typename scalar_t>
inline fVec load_float(const scalar_t* ptr) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    return fVec::loadu(ptr);
  } else {
    fVec out;
    at::vec::load_to_float<scalar_t>(ptr, out);
    return out;
  }
}

template <typename scalar_t>
inline void store_float(scalar_t* ptr, const fVec& values) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    values.store(ptr);
  } else {
    at::vec::convert_from_float<scalar_t>(values, values).store(ptr, kVec);
  }
}

// exp() of anything below this is 0 in fp32 (ln of the smallest subnormal is about -103.3). Log-terms are
// clamped here before they multiply a probability, so p = 0 columns (-inf logits) contribute exactly 0
// instead of 0 * -inf = NaN, and a large coefficient cannot overflow to inf.
constexpr float kLogFloor = -200.f;
constexpr float kInf = std::numeric_limits<float>::infinity();

// exp(d) for d <= 0 (the only arguments here: d = (x - max) / T). On AVX-512 it is 2^n * 2^f with
// n = round(d * log2(e)), f in [-1/2, 1/2], 2^f by its degree-6 Taylor polynomial (truncation error
// 1.2e-7 relative, i.e. ~1 ulp) and the scaling done by one vscalefps, which also underflows to exactly 0:
// 11 instructions against ~17 for at::vec's exp_u20 (forward, cache-resident, 1 thread: 0.75 -> 0.46 ns per
// element on this machine's AVX-512 CPU). Other levels
// use exp_u20 (20 ulp). d = -inf gives 0; NaN inputs are tracked by the caller, not propagated here.
inline fVec exp_nonpositive(const fVec& d) {
#if defined(CPU_CAPABILITY_AVX512)
  constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
  const __m512 t = _mm512_max_ps(_mm512_mul_ps(d, _mm512_set1_ps(kLog2e)), _mm512_set1_ps(-200.f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(t, n);
  // 2^f = sum_k (f ln2)^k / k!, coefficients c_k = ln2^k / k!.
  __m512 p = _mm512_set1_ps(kLn2 * kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 720.f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLn2 * kLn2 * kLn2 * kLn2 * kLn2 / 120.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLn2 * kLn2 * kLn2 * kLn2 / 24.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLn2 * kLn2 * kLn2 / 6.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLn2 * kLn2 / 2.f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(kLn2));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.f));
  return _mm512_scalef_ps(p, n);
#else
  return d.exp_u20();
#endif
}

// Running statistics of one row. `max` is in raw-logit units (x, not z = x / T): differences x - max are
// exact for nearby values, and only then scaled by 1/T, so a +1e4 offset costs no precision.
struct RowStats {
  float max = -kInf;
  fVec sum_exp = fVec(0.f);
  fVec sum_expd = fVec(0.f);
  float tail_sum_exp = 0.f;   // elements outside whole vectors
  float tail_sum_expd = 0.f;
  bool poisoned = false;      // a NaN or +inf was seen

  // Move the reference point from `max` to `new_max` (new_max > max).
  template <bool kEntropy>
  inline void rescale(float new_max, float inv_t) {
    if (max == -kInf) {
      max = new_max;  // nothing accumulated yet
      return;
    }
    const float delta = (max - new_max) * inv_t;
    const float scale = std::exp(delta);
    if constexpr (kEntropy) {
      sum_expd = (sum_expd + sum_exp * fVec(delta)) * fVec(scale);
      tail_sum_expd = (tail_sum_expd + tail_sum_exp * delta) * scale;
    }
    sum_exp = sum_exp * fVec(scale);
    tail_sum_exp *= scale;
    max = new_max;
  }
};

template <typename scalar_t, bool kEntropy>
void forward_row(const scalar_t* x, int64_t V, float inv_t, RowStats& st) {
  const fVec v_inv_t(inv_t);
  const fVec v_pos_inf(kInf);
  const fVec v_log_floor(kLogFloor);
  fVec ok = fVec(0.f) == fVec(0.f);  // all bits set; a lane turns 0 once it sees NaN or +inf
  const int64_t V_vec = V - V % kVec;

  for (int64_t start = 0; start < V_vec; start += kBlock) {
    const int64_t end = std::min(start + kBlock, V_vec);
    fVec block_max(-kInf);
    for (int64_t j = start; j < end; j += kVec) {
      const fVec xj = load_float(x + j);
      ok = ok & (xj < v_pos_inf);
      // A plain SIMD max (1 instruction; at::vec::maximum spends 3 to propagate NaN): NaN is tracked in `ok`.
      block_max = at::vec::clamp_min(block_max, xj);
    }
    const float bmax = at::vec::vec_reduce_all<float>(
        [](fVec& a, fVec& b) { return at::vec::maximum(a, b); }, block_max);
    if (!(bmax > -kInf)) continue;  // all -inf; a NaN is already flagged in `ok`
    if (bmax > st.max) st.rescale<kEntropy>(bmax, inv_t);
    const fVec v_max(st.max);
    // Two-level summation: a block-local sum, then one add into the running sum. One long chain of ~V/kVec
    // adds of tiny terms into a growing fp32 sum drifts (measured: 2e-5 relative at V=151936); blocks of
    // kBlock/kVec = 32 terms keep the error near 1e-7.
    fVec block_sum(0.f), block_sumd(0.f);
    for (int64_t j = start; j < end; j += kVec) {
      const fVec d = (load_float(x + j) - v_max) * v_inv_t;
      const fVec e = exp_nonpositive(d);
      block_sum = block_sum + e;
      if constexpr (kEntropy) block_sumd = at::vec::fmadd(e, at::vec::clamp_min(d, v_log_floor), block_sumd);
    }
    st.sum_exp = st.sum_exp + block_sum;
    if constexpr (kEntropy) st.sum_expd = st.sum_expd + block_sumd;
  }
  if (ok.zero_mask() != 0) st.poisoned = true;  // an all-zero lane compares equal to 0.f
  for (int64_t j = V_vec; j < V; ++j) {  // scalar tail
    const float xj = static_cast<float>(x[j]);
    if (!(xj < kInf)) {
      st.poisoned = true;
      continue;
    }
    if (xj == -kInf) continue;
    if (xj > st.max) st.rescale<kEntropy>(xj, inv_t);
    const float d = (xj - st.max) * inv_t;
    const float e = std::exp(d);
    st.tail_sum_exp += e;
    if constexpr (kEntropy) st.tail_sum_expd += e * d;
  }
}

template <typename scalar_t, bool kEntropy>
void forward_impl(const at::Tensor& logits_NV, const at::Tensor& labels_N, double temperature,
                  const TokenLogprobsForwardOut& out) {
  const int64_t N = logits_NV.size(0), V = logits_NV.size(1);
  const scalar_t* logits = logits_NV.const_data_ptr<scalar_t>();
  const int64_t* labels = labels_N.const_data_ptr<int64_t>();
  float* logp = out.logp_N.mutable_data_ptr<float>();
  float* row_max = out.max_N.mutable_data_ptr<float>();
  float* log_sum = out.log_sum_N.mutable_data_ptr<float>();
  float* entropy = kEntropy ? out.entropy_N.mutable_data_ptr<float>() : nullptr;
  const float inv_t = static_cast<float>(1.0 / temperature);
  constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* x = logits + n * V;  // int64 offsets: N * V may exceed 2^31
      RowStats st;
      forward_row<scalar_t, kEntropy>(x, V, inv_t, st);
      const float sum_exp = at::vec::vec_reduce_all<float>(std::plus<fVec>(), st.sum_exp) + st.tail_sum_exp;
      const float ls = std::log(sum_exp);
      // An all -inf row has max = -inf and sum 0: log_softmax is NaN there, and so are we.
      const bool defined = !st.poisoned && st.max > -kInf;
      row_max[n] = defined ? st.max : kNaN;
      log_sum[n] = defined ? ls : kNaN;
      logp[n] = defined ? (static_cast<float>(x[labels[n]]) - st.max) * inv_t - ls : kNaN;
      if constexpr (kEntropy) {
        const float sum_expd =
            at::vec::vec_reduce_all<float>(std::plus<fVec>(), st.sum_expd) + st.tail_sum_expd;
        entropy[n] = defined ? ls - sum_expd / sum_exp : kNaN;
      }
    }
  });
}

template <typename scalar_t, bool kEntropy>
void backward_impl(const at::Tensor& grad_logp_N, const at::Tensor* grad_entropy_N, const at::Tensor& logits_NV,
                   const at::Tensor& labels_N, const at::Tensor& max_N, const at::Tensor& log_sum_N,
                   const at::Tensor* entropy_N, double temperature, at::Tensor& grad_logits_NV) {
  const int64_t N = logits_NV.size(0), V = logits_NV.size(1);
  const scalar_t* logits = logits_NV.const_data_ptr<scalar_t>();
  scalar_t* grad = grad_logits_NV.mutable_data_ptr<scalar_t>();
  const int64_t* labels = labels_N.const_data_ptr<int64_t>();
  const float* g_logp = grad_logp_N.const_data_ptr<float>();
  const float* g_ent = kEntropy ? grad_entropy_N->const_data_ptr<float>() : nullptr;
  const float* ent = kEntropy ? entropy_N->const_data_ptr<float>() : nullptr;
  const float* row_max = max_N.const_data_ptr<float>();
  const float* log_sum = log_sum_N.const_data_ptr<float>();
  const float inv_t = static_cast<float>(1.0 / temperature);
  const int64_t V_vec = V - V % kVec;

  at::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    for (int64_t n = begin; n < end; ++n) {
      const scalar_t* x = logits + n * V;
      scalar_t* gx = grad + n * V;
      // dL/dx_j = -p_j * (g_logp + g_ent * (log p_j + H)) / T, plus g_logp / T at the label.
      const float a = g_logp[n] * inv_t;
      const float b = kEntropy ? g_ent[n] * inv_t : 0.f;
      const float c = kEntropy ? a + b * ent[n] : a;  // coefficient of p_j not multiplying log p_j
      const fVec v_inv_t(inv_t), v_max(row_max[n]), v_ls(log_sum[n]), v_b(b), v_c(c), v_log_floor(kLogFloor);
      for (int64_t j = 0; j < V_vec; j += kVec) {
        const fVec log_p = (load_float(x + j) - v_max) * v_inv_t - v_ls;
        const fVec p = exp_nonpositive(log_p);
        fVec g;
        if constexpr (kEntropy) {
          g = fVec(0.f) - p * at::vec::fmadd(v_b, at::vec::clamp_min(log_p, v_log_floor), v_c);
        } else {
          g = fVec(0.f) - p * v_c;
        }
        store_float(gx + j, g);
      }
      auto grad_at = [&](int64_t j) {
        const float log_p = (static_cast<float>(x[j]) - row_max[n]) * inv_t - log_sum[n];
        const float p = std::exp(log_p);
        return kEntropy ? -p * (b * std::max(log_p, kLogFloor) + c) : -p * c;
      };
      for (int64_t j = V_vec; j < V; ++j) gx[j] = static_cast<scalar_t>(grad_at(j));
      // The label's extra term g_logp / T, added in fp32 before the single rounding to the logits dtype.
      gx[labels[n]] = static_cast<scalar_t>(grad_at(labels[n]) + a);
    }
  });
}

// fp32, bf16 and fp16 logits; ops.cpp rejects other dtypes before dispatching here.
#define PRIMEFLOW_LOGIT_TYPES(...)                         \
  AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__)               \
  AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__)            \
  AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)

void token_logprobs_forward(const at::Tensor& logits_NV, const at::Tensor& labels_N, double temperature,
                            const TokenLogprobsForwardOut& out) {
  const bool with_entropy = out.entropy_N.defined();
  AT_DISPATCH_SWITCH(logits_NV.scalar_type(), "token_logprobs_fwd", PRIMEFLOW_LOGIT_TYPES([&] {
    if (with_entropy) {
      forward_impl<scalar_t, true>(logits_NV, labels_N, temperature, out);
    } else {
      forward_impl<scalar_t, false>(logits_NV, labels_N, temperature, out);
    }
  }));
}

void token_logprobs_backward(const at::Tensor& grad_logp_N, const at::Tensor* grad_entropy_N,
                             const at::Tensor& logits_NV, const at::Tensor& labels_N, const at::Tensor& max_N,
                             const at::Tensor& log_sum_N, const at::Tensor* entropy_N, double temperature,
                             at::Tensor& grad_logits_NV) {
  AT_DISPATCH_SWITCH(logits_NV.scalar_type(), "token_logprobs_bwd", PRIMEFLOW_LOGIT_TYPES([&] {
    if (grad_entropy_N != nullptr) {
      backward_impl<scalar_t, true>(grad_logp_N, grad_entropy_N, logits_NV, labels_N, max_N, log_sum_N,
                                    entropy_N, temperature, grad_logits_NV);
    } else {
      backward_impl<scalar_t, false>(grad_logp_N, nullptr, logits_NV, labels_N, max_N, log_sum_N, nullptr,
                                     temperature, grad_logits_NV);
    }
  }));
}

}  // namespace CPU_CAPABILITY
}  // namespace primeflow
