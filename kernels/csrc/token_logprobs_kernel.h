// Per-row token log-prob kernels on CPU. Compiled once per SIMD level (see CMakeLists.txt); ops.cpp picks
// the widest level the running CPU supports.
//
// Legend: N rows, V vocabulary, x = logits (as fp32), T temperature, z = x / T. Row statistics are kept as
// the pair (max_N, log_sum_N): max of the raw logits x and log sum_j exp((x_j - max) / T), so that
// lse(z) = max / T + log_sum and log p_j = (x_j - max) / T - log_sum. Nothing large is subtracted from
// anything large: with logits offset by +1e4, log p stays accurate to fp32 epsilon of |log p| (torch's fp32
// path forms z - lse and loses ~3 digits there).
#pragma once

#include <ATen/core/Tensor.h>

namespace primeflow {

struct TokenLogprobsForwardOut {
  at::Tensor logp_N;     // fp32
  at::Tensor max_N;      // fp32, max of the raw logits x over the row
  at::Tensor log_sum_N;  // fp32, log sum_j exp((x_j - max) / T)
  at::Tensor entropy_N;  // fp32, undefined when not requested
};

// Each SIMD-level copy defines, in namespace primeflow::<level> (the level's inline namespace):
//   void token_logprobs_forward(logits_NV, labels_N, temperature, const TokenLogprobsForwardOut& out);
//   void token_logprobs_backward(grad_logp_N, grad_entropy_N*, logits_NV, labels_N, max_N, log_sum_N,
//                                entropy_N*, temperature, at::Tensor& grad_logits_NV);
// (pointers are null when entropy was not requested). ops.cpp declares the three copies it dispatches to.


}  // namespace primeflow
