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
  /// A block's fp16 scale with F16C (Eigen's conversion, compiled for the build's flags, may
  /// take a dozen integer instructions).
  static SDPA_ALWAYS_INLINE float scale_of(const BlockQ8_0& block) {
    std::uint16_t bits;
    std::memcpy(&bits, &block.scale, sizeof bits);
    return _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)));
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
