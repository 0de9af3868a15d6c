// sdpa/simd/scalar.hpp - the width-1 "vector": always available, any arithmetic type.
#pragma once

#include "arch.hpp"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

SDPA_BEGIN_NAMESPACE
namespace simd {

template <class T>
struct Vec<T, scalar> {
  using value_type = T;
  static constexpr int width = 1;
  T v;

  static SDPA_ALWAYS_INLINE Vec load(const T* p) { return {*p}; }
  template <class S, class = std::enable_if_t<is_half_precision<S>>>
  static SDPA_ALWAYS_INLINE Vec load(const S* p) { return {T(*p)}; }
  static SDPA_ALWAYS_INLINE Vec load(const std::int8_t* p) { return {T(*p)}; }
  static SDPA_ALWAYS_INLINE Vec broadcast_scale(const BlockQ8_0& block) { return {T(float(block.scale))}; }
  static SDPA_ALWAYS_INLINE Vec broadcast(T x) { return {x}; }
  static SDPA_ALWAYS_INLINE Vec zero() { return {T(0)}; }
  SDPA_ALWAYS_INLINE void store(T* p) const { *p = v; }
};

template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> operator+(Vec<T, scalar> a, Vec<T, scalar> b) { return {a.v + b.v}; }
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> operator-(Vec<T, scalar> a, Vec<T, scalar> b) { return {a.v - b.v}; }
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> operator*(Vec<T, scalar> a, Vec<T, scalar> b) { return {a.v * b.v}; }
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> operator/(Vec<T, scalar> a, Vec<T, scalar> b) { return {a.v / b.v}; }
/// a * b + c, rounded once where the build has fused multiply-add (as the vector ISAs do).
/// Written as std::fma then, not a * b + c: the compiler contracts a * b + c into an FMA in some
/// inlined copies and not in others, so a row's result would depend on its place in the tile.
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> fma(Vec<T, scalar> a, Vec<T, scalar> b, Vec<T, scalar> c) {
#if defined(__FMA__) || defined(__ARM_FEATURE_FMA)
  if constexpr (std::is_same_v<T, float> || std::is_same_v<T, double>) return {std::fma(a.v, b.v, c.v)};
#endif
  return {a.v * b.v + c.v};
}
/// max and min return `a` when either operand is NaN, as x86's maxps(b, a) does: NaN in the
/// first operand propagates on every ISA.
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> max(Vec<T, scalar> a, Vec<T, scalar> b) { return {!(a.v < b.v) ? a.v : b.v}; }
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> min(Vec<T, scalar> a, Vec<T, scalar> b) { return {!(a.v > b.v) ? a.v : b.v}; }
template <class T> SDPA_ALWAYS_INLINE T reduce_add(Vec<T, scalar> a) { return a.v; }
/// reduce_add of one "vector" per lane, as the wider ISAs have it.
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> reduce_add_each(const Vec<T, scalar> (&a)[1]) { return a[0]; }
template <class T> SDPA_ALWAYS_INLINE T reduce_max(Vec<T, scalar> a) { return a.v; }
template <class T> SDPA_ALWAYS_INLINE bool less(Vec<T, scalar> a, Vec<T, scalar> b) { return a.v < b.v; }
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> select(bool m, Vec<T, scalar> a, Vec<T, scalar> b) { return m ? a : b; }
/// Round to nearest, ties to even (the current rounding mode, which is that by default).
template <class T> SDPA_ALWAYS_INLINE Vec<T, scalar> round_nearest(Vec<T, scalar> a) { return {std::nearbyint(a.v)}; }

/// 2^n for a float n that holds an integer in [-127, 127], built from its exponent bits
/// (n = -127 gives +0).
SDPA_ALWAYS_INLINE Vec<float, scalar> pow2_integer(Vec<float, scalar> n) {
  // Clamped before the conversion, which would be UB for NaN or huge values (the vector ISAs'
  // conversions are defined for them). 128 gives +inf; NaN gives 0, and p * 0 stays NaN.
  const float clamped = n.v >= -127.0f ? (n.v <= 128.0f ? n.v : 128.0f) : -127.0f;
  const std::uint32_t bits = std::uint32_t(std::int32_t(clamped) + 127) << 23;
  float out;
  std::memcpy(&out, &bits, sizeof out);
  return {out};
}

}  // namespace simd
SDPA_END_NAMESPACE
