// sdpa/simd/avx2.hpp - 8 floats in a ymm register (AVX2 with FMA).
#pragma once

#include "arch.hpp"

#if SDPA_TARGET_AVX2
#include <immintrin.h>

#include <cstdint>
#include <cstring>

SDPA_BEGIN_NAMESPACE
namespace simd {

template <>
struct Vec<float, avx2> {
  using value_type = float;
  static constexpr int width = 8;
  __m256 v;

  static SDPA_ALWAYS_INLINE Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::half* p) {  // vcvtph2ps (F16C)
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::bfloat16* p) {  // bf16 is a float's top half: shift it up
    const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(wide, 16))};
  }
  /// A block's fp16 scale in every lane: converted as a scalar with F16C, then broadcast
  /// (Eigen's conversion, compiled for the build's flags, may take a dozen integer instructions).
  static SDPA_ALWAYS_INLINE Vec broadcast_scale(const BlockQ8_0& block) {
    std::uint16_t bits;
    std::memcpy(&bits, &block.scale, sizeof bits);
    return {_mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const std::int8_t* p) {
    return {_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))))};
  }
  static SDPA_ALWAYS_INLINE Vec broadcast(float x) { return {_mm256_set1_ps(x)}; }
  static SDPA_ALWAYS_INLINE Vec zero() { return {_mm256_setzero_ps()}; }
  SDPA_ALWAYS_INLINE void store(float* p) const { _mm256_storeu_ps(p, v); }
};
using V256 = Vec<float, avx2>;

SDPA_ALWAYS_INLINE V256 operator+(V256 a, V256 b) { return {_mm256_add_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V256 operator-(V256 a, V256 b) { return {_mm256_sub_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V256 operator*(V256 a, V256 b) { return {_mm256_mul_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V256 operator/(V256 a, V256 b) { return {_mm256_div_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V256 fma(V256 a, V256 b, V256 c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
// maxps returns its second operand when either is NaN: swap so that NaN in `a` propagates.
SDPA_ALWAYS_INLINE V256 max(V256 a, V256 b) { return {_mm256_max_ps(b.v, a.v)}; }
SDPA_ALWAYS_INLINE V256 min(V256 a, V256 b) { return {_mm256_min_ps(b.v, a.v)}; }
SDPA_ALWAYS_INLINE float reduce_add(V256 a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
/// reduce_add of 8 vectors at once: lane t of the result is reduce_add(a[t]), the same sums in
/// the same order (halves, then pairs), bit for bit.
SDPA_ALWAYS_INLINE V256 reduce_add_each(const V256 (&a)[8]) {
  // Input 4h + k is taken as 2k + h: after the two steps lane 4h + k holds the sum of the input
  // at 2k + h, so taking them transposed leaves every sum in its own lane.
  const auto in = [&](int i) { return a[(i % 2) * 4 + i / 2].v; };
  __m256 halves[4];  // half h of halves[k] is input 2k + h's halves added: lanes j + (j + 4)
  for (int k = 0; k < 4; ++k)
    halves[k] = _mm256_add_ps(_mm256_permute2f128_ps(in(2 * k), in(2 * k + 1), 0x20),
                              _mm256_permute2f128_ps(in(2 * k), in(2 * k + 1), 0x31));
  // within each half, as reduce_add's last two steps: (x0 + x2) + (x1 + x3)
  const __m256 u01 = _mm256_add_ps(_mm256_unpacklo_ps(halves[0], halves[1]), _mm256_unpackhi_ps(halves[0], halves[1]));
  const __m256 u23 = _mm256_add_ps(_mm256_unpacklo_ps(halves[2], halves[3]), _mm256_unpackhi_ps(halves[2], halves[3]));
  return {_mm256_add_ps(_mm256_shuffle_ps(u01, u23, _MM_SHUFFLE(1, 0, 1, 0)),
                        _mm256_shuffle_ps(u01, u23, _MM_SHUFFLE(3, 2, 3, 2)))};
}
SDPA_ALWAYS_INLINE float reduce_max(V256 a) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(a.v), _mm256_extractf128_ps(a.v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  s = _mm_max_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}
SDPA_ALWAYS_INLINE __m256 less(V256 a, V256 b) { return _mm256_cmp_ps(a.v, b.v, _CMP_LT_OQ); }
SDPA_ALWAYS_INLINE V256 select(__m256 m, V256 a, V256 b) { return {_mm256_blendv_ps(b.v, a.v, m)}; }
SDPA_ALWAYS_INLINE V256 round_nearest(V256 a) {
  return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
SDPA_ALWAYS_INLINE V256 pow2_integer(V256 n) {
  const __m256i biased = _mm256_add_epi32(_mm256_cvtps_epi32(n.v), _mm256_set1_epi32(127));
  return {_mm256_castsi256_ps(_mm256_slli_epi32(biased, 23))};
}

}  // namespace simd
SDPA_END_NAMESPACE
#endif
