// sdpa/storage.hpp - the element types sdpa stores, and the type it computes in.
/// \file
/// Storage types: which element types Q, K, V and the output may have, and compute_type.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace sdpa {

/// True for Eigen's 16-bit floats, Eigen::half (IEEE fp16) and Eigen::bfloat16, which sdpa
/// stores but never computes in.
template <class T>
inline constexpr bool is_half_precision = std::is_same_v<T, Eigen::half> || std::is_same_v<T, Eigen::bfloat16>;

/// The type that scores, the softmax state and the P V accumulators use for elements of type
/// T: float for the 16-bit types (whose 8 or 11 significant bits could not hold a sum of
/// thousands of terms), T itself for float, double and long double. A 16-bit output is
/// rounded once, at the end.
template <class T>
using compute_type = std::conditional_t<is_half_precision<T>, float, T>;

namespace detail {

template <class T>
inline constexpr bool is_storage_type = std::is_floating_point_v<T> || is_half_precision<T>;

/// The combinations a call may mix: one type for everything, or queries (and output) in
/// float or a 16-bit type against keys and values in a 16-bit type, as a half-precision KV
/// cache under float or 16-bit activations.
template <class Q, class KV>
inline constexpr bool is_storage_pair =
    is_storage_type<Q> && (std::is_same_v<Q, KV> || (is_half_precision<KV> && std::is_same_v<compute_type<Q>, float>));

/// A compile-time error naming the rule (the compiler's note names the types).
template <class Q, class KV>
constexpr void check_storage() {
  static_assert(is_storage_type<Q>,
                "sdpa: Q (and the output) must be float, double, long double, Eigen::half or Eigen::bfloat16");
  static_assert(is_storage_pair<Q, KV>,
                "sdpa: K and V must have Q's element type, or be Eigen::half / Eigen::bfloat16 under float, "
                "Eigen::half or Eigen::bfloat16 queries");
}

}  // namespace detail
}  // namespace sdpa
