// sdpa/simd/neon.hpp - 4 floats in a 128-bit AArch64 NEON register.
#pragma once

#include "arch.hpp"

#if SDPA_TARGET_NEON
#include <arm_neon.h>

#include <cstdint>
#include <cstring>

SDPA_BEGIN_NAMESPACE
namespace simd {

template <>
struct Vec<float, neon> {
  using value_type = float;
  static constexpr int width = 4;
  float32x4_t v;

  static SDPA_ALWAYS_INLINE Vec load(const float* p) { return {vld1q_f32(p)}; }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::half* p) {  // fcvtl
    return {vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p))))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const Eigen::bfloat16* p) {  // bf16 is a float's top half: shift it up
    return {vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(reinterpret_cast<const std::uint16_t*>(p)), 16))};
  }
  static SDPA_ALWAYS_INLINE Vec load(const std::int8_t* p) {
    std::int32_t four;  // exactly 4 bytes: an 8-byte load could read past the last block
    std::memcpy(&four, p, sizeof four);
    const int16x8_t wide = vmovl_s8(vreinterpret_s8_s32(vdup_n_s32(four)));
    return {vcvtq_f32_s32(vmovl_s16(vget_low_s16(wide)))};
  }
  static SDPA_ALWAYS_INLINE Vec broadcast_scale(const BlockQ8_0& block) { return {vdupq_n_f32(float(block.scale))}; }  // fcvt
  static SDPA_ALWAYS_INLINE Vec broadcast(float x) { return {vdupq_n_f32(x)}; }
  static SDPA_ALWAYS_INLINE Vec zero() { return {vdupq_n_f32(0.0f)}; }
  SDPA_ALWAYS_INLINE void store(float* p) const { vst1q_f32(p, v); }
};
using V128 = Vec<float, neon>;

SDPA_ALWAYS_INLINE V128 operator+(V128 a, V128 b) { return {vaddq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 operator-(V128 a, V128 b) { return {vsubq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 operator*(V128 a, V128 b) { return {vmulq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 operator/(V128 a, V128 b) { return {vdivq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 fma(V128 a, V128 b, V128 c) { return {vfmaq_f32(c.v, a.v, b.v)}; }
// NEON's fmax/fmin return NaN when either operand is NaN: a superset of the contract.
SDPA_ALWAYS_INLINE V128 max(V128 a, V128 b) { return {vmaxq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 min(V128 a, V128 b) { return {vminq_f32(a.v, b.v)}; }
SDPA_ALWAYS_INLINE float reduce_add(V128 a) { return vaddvq_f32(a.v); }
/// reduce_add of 4 vectors at once: lane t of the result is reduce_add(a[t]), (x0 + x1) + (x2 + x3).
SDPA_ALWAYS_INLINE V128 reduce_add_each(const V128 (&a)[4]) {
  return {vpaddq_f32(vpaddq_f32(a[0].v, a[1].v), vpaddq_f32(a[2].v, a[3].v))};
}
SDPA_ALWAYS_INLINE float reduce_max(V128 a) { return vmaxvq_f32(a.v); }
SDPA_ALWAYS_INLINE uint32x4_t less(V128 a, V128 b) { return vcltq_f32(a.v, b.v); }
SDPA_ALWAYS_INLINE V128 select(uint32x4_t m, V128 a, V128 b) { return {vbslq_f32(m, a.v, b.v)}; }
SDPA_ALWAYS_INLINE V128 round_nearest(V128 a) { return {vrndnq_f32(a.v)}; }
SDPA_ALWAYS_INLINE V128 pow2_integer(V128 n) {
  const int32x4_t biased = vaddq_s32(vcvtnq_s32_f32(n.v), vdupq_n_s32(127));
  return {vreinterpretq_f32_s32(vshlq_n_s32(biased, 23))};
}

}  // namespace simd
SDPA_END_NAMESPACE
#endif
