// sdpa/simd/avx512.hpp - 16 floats in a zmm register (AVX-512F + DQ).
#pragma once

#include "arch.hpp"

#if SDPA_TARGET_AVX512
#include <immintrin.h>

#include <cstdint>
#include <cstring>

SDPA_BEGIN_NAMESPACE
namespace simd {

template <>
struct Vec<float, avx512> {
  using value_type = float;
  static constexpr int width = 16;
  __m512 v;

  static SDPA_ALWAYS_INLINE Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::half* p) {  // vcvtph2ps (AVX-512F)
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::bfloat16* p) {  // bf16 is a float's top half: shift it up
    const __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(wide, 16))};
  }
  /// A block's fp16 scale in every lane: converted as a scalar, then broadcast (Eigen's
  /// conversion, compiled for the build's flags, may take a dozen integer instructions; a
  /// 16-bit broadcast converted as a whole zmm decoded int8 caches 6-11% slower on Zen 4).
  static SDPA_ALWAYS_INLINE Vec broadcast_scale(const BlockQ8_0& block) {
    std::uint16_t bits;
    std::memcpy(&bits, &block.scale, sizeof bits);
    return {_mm512_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const std::int8_t* p) {
    return {_mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))))};
  }
  static SDPA_ALWAYS_INLINE Vec broadcast(float x) { return {_mm512_set1_ps(x)}; }
  static SDPA_ALWAYS_INLINE Vec zero() { return {_mm512_setzero_ps()}; }
  SDPA_ALWAYS_INLINE void store(float* p) const { _mm512_storeu_ps(p, v); }
};
using V512 = Vec<float, avx512>;

SDPA_ALWAYS_INLINE V512 operator+(V512 a, V512 b) { return {_mm512_add_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V512 operator-(V512 a, V512 b) { return {_mm512_sub_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V512 operator*(V512 a, V512 b) { return {_mm512_mul_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V512 operator/(V512 a, V512 b) { return {_mm512_div_ps(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V512 fma(V512 a, V512 b, V512 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
// maxps returns its second operand when either is NaN: swap so that NaN in `a` propagates.
SDPA_ALWAYS_INLINE V512 max(V512 a, V512 b) { return {_mm512_max_ps(b.v, a.v)}; }
SDPA_ALWAYS_INLINE V512 min(V512 a, V512 b) { return {_mm512_min_ps(b.v, a.v)}; }
// Halving trees written out: GCC 12 warns (-Wuninitialized) inside its own _mm512_reduce_*_ps.
SDPA_ALWAYS_INLINE float reduce_add(V512 a) {
  const __m256 half = _mm256_add_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
/// reduce_add of 16 vectors at once: lane t of the result is reduce_add(a[t]), the same sums in
/// the same order (halves, quarters, then pairs), bit for bit, in 45 instructions instead of 16
/// reductions' 128 and their 16 scalar results.
SDPA_ALWAYS_INLINE V512 reduce_add_each(const V512 (&a)[16]) {
  // Input 4q + k is taken as 4k + q: after the three steps lane 4q + k holds the sum of the
  // input at 4k + q, so taking them transposed leaves every sum in its own lane.
  const auto in = [&](int i) { return a[(i % 4) * 4 + i / 4].v; };
  __m512 pairs[8];  // quarters 0 + 2 and 1 + 3 of inputs 2i and 2i + 1: lanes j + (j + 8)
  for (int i = 0; i < 8; ++i)
    pairs[i] = _mm512_add_ps(_mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), 0x44),
                             _mm512_shuffle_f32x4(in(2 * i), in(2 * i + 1), 0xEE));
  __m512 quads[4];  // quarter m of quads[k] is input 4k + m's halves added: lanes j + (j + 4)
  for (int k = 0; k < 4; ++k)
    quads[k] = _mm512_add_ps(_mm512_shuffle_f32x4(pairs[2 * k], pairs[2 * k + 1], 0x88),
                             _mm512_shuffle_f32x4(pairs[2 * k], pairs[2 * k + 1], 0xDD));
  // within each quarter, as reduce_add's last two steps: (x0 + x2) + (x1 + x3)
  const __m512 u01 = _mm512_add_ps(_mm512_unpacklo_ps(quads[0], quads[1]), _mm512_unpackhi_ps(quads[0], quads[1]));
  const __m512 u23 = _mm512_add_ps(_mm512_unpacklo_ps(quads[2], quads[3]), _mm512_unpackhi_ps(quads[2], quads[3]));
  return {_mm512_add_ps(_mm512_shuffle_ps(u01, u23, _MM_SHUFFLE(1, 0, 1, 0)),
                        _mm512_shuffle_ps(u01, u23, _MM_SHUFFLE(3, 2, 3, 2)))};
}
SDPA_ALWAYS_INLINE float reduce_max(V512 a) {
  const __m256 half = _mm256_max_ps(_mm512_castps512_ps256(a.v), _mm512_extractf32x8_ps(a.v, 1));
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(half), _mm256_extractf128_ps(half, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
SDPA_ALWAYS_INLINE __mmask16 less(V512 a, V512 b) { return _mm512_cmp_ps_mask(a.v, b.v, _CMP_LT_OQ); }
SDPA_ALWAYS_INLINE V512 select(__mmask16 m, V512 a, V512 b) { return {_mm512_mask_blend_ps(m, b.v, a.v)}; }
SDPA_ALWAYS_INLINE V512 round_nearest(V512 a) {
  return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
}
SDPA_ALWAYS_INLINE V512 pow2_integer(V512 n) {
  const __m512i biased = _mm512_add_epi32(_mm512_cvtps_epi32(n.v), _mm512_set1_epi32(127));
  return {_mm512_castsi512_ps(_mm512_slli_epi32(biased, 23))};
}

}  // namespace simd
SDPA_END_NAMESPACE
#endif
