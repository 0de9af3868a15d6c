// sdpa/storage.hpp - the element types sdpa stores, and the type it computes in.
/// \file
/// Storage types: which element types Q, K, V and the output may have, compute_type, and the
/// int8 block BlockQ8_0.
#pragma once

#include "config.hpp"

#include <Eigen/Core>

#include <cstdint>
#include <type_traits>

namespace sdpa {

/// 32 consecutive features of one key or value row in 8 bits, ggml's q8_0 layout (34 bytes,
/// llama.cpp's `--cache-type-k q8_0`): x_i ~ scale * q_i, with scale = max |x_i| / 127 in fp16.
/// A KVCache<BlockQ8_0> stores its rows as head_dim / 32 of these, quantised as tokens are
/// appended and dequantised in registers by the decode microkernels.
struct BlockQ8_0 {
  static constexpr int size = 32;  ///< features per block
  Eigen::half scale;               ///< the block's step: max |x| / 127
  std::int8_t q[size];             ///< x_i / scale, rounded to nearest, in [-127, 127]
};

/// True for the quantised storage types (BlockQ8_0), whose elements are blocks of features.
template <class T>
inline constexpr bool is_quantized = std::is_same_v<T, BlockQ8_0>;

/// Features per element of storage type T: 32 for BlockQ8_0, 1 otherwise.
template <class T>
inline constexpr long features_per_element = is_quantized<T> ? BlockQ8_0::size : 1;

/// True for Eigen's 16-bit floats, Eigen::half (IEEE fp16) and Eigen::bfloat16, which sdpa
/// stores but never computes in.
template <class T>
inline constexpr bool is_half_precision = std::is_same_v<T, Eigen::half> || std::is_same_v<T, Eigen::bfloat16>;

/// True for every storage type that is computed in float without being float.
template <class T>
inline constexpr bool is_compressed = is_half_precision<T> || is_quantized<T>;

/// The type that scores, the softmax state and the P V accumulators use for elements of type
/// T: float for the 16-bit types (whose 8 or 11 significant bits could not hold a sum of
/// thousands of terms), T itself for float, double and long double. A 16-bit output is
/// rounded once, at the end.
template <class T>
using compute_type = std::conditional_t<is_compressed<T>, float, T>;

}  // namespace sdpa

SDPA_BEGIN_NAMESPACE
namespace detail {

template <class T>
inline constexpr bool is_storage_type = std::is_floating_point_v<T> || is_half_precision<T>;

/// The combinations a call may mix: one type for everything, or queries (and output) in
/// float or a 16-bit type against keys and values in a 16-bit or int8 (BlockQ8_0) type, as
/// a compressed KV cache under float or 16-bit activations.
template <class Q, class KV>
inline constexpr bool is_storage_pair =
    is_storage_type<Q> && (std::is_same_v<Q, KV> || (is_compressed<KV> && std::is_same_v<compute_type<Q>, float>));

/// A compile-time error naming the rule (the compiler's note names the types).
template <class Q, class KV>
constexpr void check_storage() {
  static_assert(is_storage_type<Q>,
                "sdpa: Q (and the output) must be float, double, long double, Eigen::half or Eigen::bfloat16");
  static_assert(is_storage_pair<Q, KV>,
                "sdpa: K and V must have Q's element type, or be Eigen::half, Eigen::bfloat16 or sdpa::BlockQ8_0 "
                "under float, Eigen::half or Eigen::bfloat16 queries");
}

/// Features in `elements` elements of storage type S (a row of BlockQ8_0 blocks has 32 each).
template <class S>
constexpr long features(long elements) {
  return elements * features_per_element<S>;
}

/// Feature e of a row of storage type S, as a float (or as S's own compute type).
template <class S>
compute_type<S> feature(const S* row, long e) {
  if constexpr (is_quantized<S>) {
    const BlockQ8_0& block = row[e / BlockQ8_0::size];
    return float(block.scale) * float(block.q[e % BlockQ8_0::size]);
  } else {
    return compute_type<S>(row[e]);
  }
}

/// Where the vector microkernels read a quantised row: feature `feature` of the row whose
/// blocks start at `blocks`. Adding n moves n features along the row.
struct QuantizedFeatures {
  const BlockQ8_0* blocks;
  long feature;
  QuantizedFeatures operator+(long n) const { return {blocks, feature + n}; }
};

/// A row's start as the microkernels address its features: the pointer itself, or for a row
/// of blocks, its first feature.
template <class S>
const S* features_of(const S* row) {
  return row;
}
inline QuantizedFeatures features_of(const BlockQ8_0* row) { return {row, 0}; }

}  // namespace detail
SDPA_END_NAMESPACE
