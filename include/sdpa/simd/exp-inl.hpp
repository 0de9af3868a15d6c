// sdpa/simd/exp-inl.hpp - exp2 and exp for float vectors, written once over the Vec ops.
//
// Both reduce to 2^f * 2^n with n an integer and |f| <= 1/2; 2^f comes from Cephes'
// degree-6 minimax polynomial (exp2f.c) and 2^n from the exponent bits.
// Behaviour (tests/test_exp.cpp measures it against std::exp2 / std::exp):
//   * accurate (under 1 eps measured, stated in the README) wherever the result is a normal
//     float: exp2 on [-126, 127], exp on [-87.3, 88.0];
//   * below that, tiny results are denormal or +0 (+0 from x <= -126.5 for exp2), so -inf
//     gives exactly 0: a masked score contributes nothing, with no special case in the kernels;
//   * above it the result is +inf; NaN in, NaN out.
//
// A per-target file: kernels/targets.hpp includes it once inside each target's namespace
// and attributes (so the same source compiles for AVX-512, AVX2, NEON and scalar). No
// include guard, no includes: do not include it anywhere else.

namespace exp_detail {
/// 2^f * 2^n for |f| <= 1/2 and n integral in [-127, 127]; n = -127 gives exactly 0.
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

/// +inf where x > highest (where 2^n would need n > 127); NaN stays NaN (`less` is false).
template <class V>
SDPA_ALWAYS_INLINE V overflow_to_inf(V result, V x, float highest) {
  return select(less(V::broadcast(highest), x), V::broadcast(std::numeric_limits<float>::infinity()), result);
}
}  // namespace exp_detail

/// 2^x for x <= 127, the softmax kernels' case (x = score - running max <= 0). Inputs below
/// -127 clamp to it, where 2^n's exponent bits are all zero: the result is exactly +0 with no
/// compare, which makes -inf (a masked score) weigh nothing.
template <class V>
SDPA_ALWAYS_INLINE V exp2_no_overflow(V x) {
  const V clamped = max(x, V::broadcast(-127.0f));  // NaN stays in (max keeps its first operand)
  const V n = round_nearest(clamped);
  return exp_detail::exp2_reduced(clamped - n, n);
}

/// 2^x, elementwise, for any x.
template <class V>
SDPA_ALWAYS_INLINE V exp2(V x) {
  return exp_detail::overflow_to_inf(exp2_no_overflow(min(x, V::broadcast(127.0f))), x, 127.0f);
}

/// e^x, elementwise. Cody-Waite reduction: x = n ln2 + r with ln2 split in two parts so
/// that r is exact; then e^r = 2^(r log2 e) with |r log2 e| <= 1/2.
template <class V>
SDPA_ALWAYS_INLINE V exp(V x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kLn2Hi = 0.693359375f;  // 9 significant bits: n * kLn2Hi is exact
  constexpr float kLn2Lo = -2.12194440e-4f;
  constexpr float kLowest = -88.0296919f;  // -127 ln 2: n = -127 and below give 0
  constexpr float kHighest = 88.0296919f;  // 127 ln 2
  const V clamped = min(max(x, V::broadcast(kLowest)), V::broadcast(kHighest));
  const V n = round_nearest(clamped * V::broadcast(kLog2e));
  const V r = fma(n, V::broadcast(-kLn2Lo), fma(n, V::broadcast(-kLn2Hi), clamped));
  return exp_detail::overflow_to_inf(exp_detail::exp2_reduced(r * V::broadcast(kLog2e), n), x, kHighest);
}


/// tanh(x), elementwise, from an exp2 that is accurate for arguments <= 0 (the kernels' exp2):
/// tanh |x| = (1 - e) / (1 + e) with e = 2^(-2 log2(e) |x|) in (0, 1], and the sign of x put
/// back. Its error is absolute, not relative (1 - e loses the low bits as x -> 0): under a few
/// eps everywhere (tests/test_exp.cpp measures it; the README quotes it), which the soft cap
/// multiplies by the cap. +-inf gives +-1, NaN stays NaN.
template <class V, class Exp2>
SDPA_ALWAYS_INLINE V vector_tanh(V x, Exp2 exp2) {
  using T = typename V::value_type;
  constexpr T kMinusTwoLog2e = T(-2.885390081777926814719849362183380L);
  const V magnitude = max(x, V::zero() - x);  // NaN stays in (max keeps its first operand)
  const V e = exp2(magnitude * V::broadcast(kMinusTwoLog2e));
  const V t = (V::broadcast(T(1)) - e) / (V::broadcast(T(1)) + e);
  return select(less(x, V::zero()), V::zero() - t, t);
}
