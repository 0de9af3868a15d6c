// sdpa/simd/exp.hpp - exp2 and exp for float vectors, written once over the Vec ops.
//
// Both reduce to 2^f * 2^n with n an integer and |f| <= 1/2; 2^f comes from Cephes'
// degree-6 minimax polynomial (exp2f.c) and 2^n from the exponent bits.
// Behaviour (tests/test_exp.cpp measures it against std::exp2 / std::exp):
//   * accurate over exp2: x in [-126, 127], exp: x in [-87.3, 88.0] (results >= FLT_MIN);
//     the measured maximum relative error is stated in the README;
//   * below that range the result is exactly +0 (as with flush-to-zero), so -inf gives 0:
//     a masked score contributes nothing, with no special case in the kernels;
//   * above it the result is +inf; NaN in, NaN out.
#pragma once

#include "arch.hpp"

#include <limits>

namespace sdpa::simd {

namespace detail {
/// 2^f * 2^n for |f| <= 1/2 and n integral in [-127, 127].
template <class V>
SDPA_ALWAYS_INLINE V exp2_reduced(V f, V n) {
  V p = V::broadcast(1.535336188319500e-4f);
  p = fma(p, f, V::broadcast(1.339887440266574e-3f));
  p = fma(p, f, V::broadcast(9.618437357674640e-3f));
  p = fma(p, f, V::broadcast(5.550332471162809e-2f));
  p = fma(p, f, V::broadcast(2.402264791363012e-1f));
  p = fma(p, f, V::broadcast(6.931472028550421e-1f));
  p = fma(p, f, V::broadcast(1.0f));
  return p * pow2_integer(n);
}

/// Results under FLT_MIN become 0 and over FLT_MAX become +inf; NaN passes through
/// (`less` is false for NaN and max/min keep NaN in their first operand).
template <class V>
SDPA_ALWAYS_INLINE V saturate(V result, V x, float lowest, float highest) {
  result = select(less(x, V::broadcast(lowest)), V::zero(), result);
  return select(less(V::broadcast(highest), x), V::broadcast(std::numeric_limits<float>::infinity()), result);
}
}  // namespace detail

/// 2^x, elementwise.
template <class V>
SDPA_ALWAYS_INLINE V exp2(V x) {
  const V clamped = min(max(x, V::broadcast(-127.0f)), V::broadcast(127.0f));
  const V n = round_nearest(clamped);
  return detail::saturate(detail::exp2_reduced(clamped - n, n), x, -126.0f, 127.0f);
}

/// e^x, elementwise. Cody-Waite reduction: x = n ln2 + r with ln2 split in two parts so
/// that r is exact; then e^r = 2^(r log2 e) with |r log2 e| <= 1/2.
template <class V>
SDPA_ALWAYS_INLINE V exp(V x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits: n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kLowest = -87.3365447f;   // ln(FLT_MIN)
  constexpr float kHighest = 88.0296919f;   // 127 ln 2
  const V clamped = min(max(x, V::broadcast(kLowest - 0.5f)), V::broadcast(kHighest));
  const V n = round_nearest(clamped * V::broadcast(kLog2e));
  const V r = fma(n, V::broadcast(-kLn2Lo), fma(n, V::broadcast(-kLn2Hi), clamped));
  return detail::saturate(detail::exp2_reduced(r * V::broadcast(kLog2e), n), x, kLowest, kHighest);
}

}  // namespace sdpa::simd
