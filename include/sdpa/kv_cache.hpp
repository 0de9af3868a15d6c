// sdpa/kv_cache.hpp - the keys and values of the tokens generated so far.
/// \file
/// KVCache: the keys and values of the tokens generated so far.
#pragma once

#include "attention.hpp"
#include "detail/validate.hpp"
#include "storage.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

SDPA_BEGIN_NAMESPACE
namespace detail {

/// The product of four sizes (each >= 1) of a cache of T, or a clear error naming them when
/// that many elements cannot be addressed (rather than a product that wraps around to a small
/// buffer). `names`: what each size is ("batch", "kv_heads", ...).
template <class T>
std::size_t cache_elements(const char* function, const char* const (&names)[4], const Index (&sizes)[4]) {
  constexpr Index kMost = PTRDIFF_MAX / Index(sizeof(T));
  Index total = 1;
  for (const Index size : sizes) {
    if (total > kMost / size)
      fail(function, names[0], " ", sizes[0], " x ", names[1], " ", sizes[1], " x ", names[2], " ", sizes[2], " x ",
           sizes[3], " ", names[3], " is more elements than memory can address");
    total *= size;
  }
  return std::size_t(total);
}

/// The largest magnitude an int8 block can hold: its scale, max |x| / 127, must be a finite fp16.
inline constexpr double kMaxQuantizable = 65504.0 * 127.0;

/// Throws unless every value of the row is finite and small enough for a q8_0 block (NaN or
/// Inf would make a whole block of 32 NaN: a silent NaN far from its cause).
template <class S>
void check_quantizable(const char* function, const char* name, const S* row, Index count) {
  for (Index e = 0; e < count; ++e) {
    const double x = double(row[e]);
    if (!(std::fabs(x) <= kMaxQuantizable))
      fail(function, name, " hold ", x, " at column ", e, ": an int8 (q8_0) cache stores finite values up to ",
           kMaxQuantizable, " in magnitude");
  }
}

/// Writes `features` values as one row of T: each rounded to T, or quantised in blocks of 32,
/// x ~ scale q with scale = max |x| / 127 rounded to fp16 and q = round(x / scale), as ggml's
/// quantize_row_q8_0 (which divides by the unrounded scale; this rounds with the stored one).
template <class T, class S>
void store_row(const S* from, Index features, T* to) {
  if constexpr (is_quantized<T>) {
    for (Index b = 0; b < features / BlockQ8_0::size; ++b, ++to) {
      const S* x = from + b * BlockQ8_0::size;
      float largest = 0.0f;
      for (int i = 0; i < BlockQ8_0::size; ++i) largest = std::max(largest, std::fabs(float(x[i])));
      to->scale = Eigen::half(largest / 127.0f);
      const float step = float(to->scale), inverse = step > 0.0f ? 1.0f / step : 0.0f;
      for (int i = 0; i < BlockQ8_0::size; ++i)
        to->q[i] = std::int8_t(std::clamp(std::nearbyint(float(x[i]) * inverse), -127.0f, 127.0f));
    }
  } else {
    std::transform(from, from + features, to, [](S x) { return T(x); });
  }
}

/// Head dims a cache of T can hold: multiples of the features of one element (32 for int8 blocks).
template <class T>
void check_cache_head_dims(const char* function, Index head_dim, Index value_head_dim) {
  constexpr Index per_element = features_per_element<T>;
  if (head_dim % per_element != 0 || value_head_dim % per_element != 0)
    fail(function, "head dims ", head_dim, "/", value_head_dim, " must be multiples of ", per_element,
         ", the features of one int8 block");
}

/// New tokens for a cache of T, checked before any is written: keys n x (kv_heads head_dim)
/// and values n x (kv_heads value_head_dim), heads side by side; for int8, every value
/// quantizable.
template <class T, class K, class V>
void check_cache_tokens(const char* function, const Input<K>& k, const Input<V>& v, Index kv_heads, Index head_dim,
                        Index value_head_dim) {
  if (k.cols() != kv_heads * head_dim || v.cols() != kv_heads * value_head_dim || v.rows() != k.rows())
    fail(function, "keys are ", shape(k.rows(), k.cols()), " and values ", shape(v.rows(), v.cols()), ": expected n x ",
         kv_heads * head_dim, " and n x ", kv_heads * value_head_dim);
  if constexpr (is_quantized<T>) {
    for (Index t = 0; t < k.rows(); ++t) {
      check_quantizable(function, "keys", k.view().row(t), k.cols());
      check_quantizable(function, "values", v.view().row(t), v.cols());
    }
  }
}

/// Stores head h of token t of checked tokens (check_cache_tokens) at key_to and value_to.
template <class T, class K, class V>
void store_cache_token(const Input<K>& k, const Input<V>& v, Index t, Index h, Index head_dim, Index value_head_dim,
                       T* key_to, T* value_to) {
  store_row(k.view().row(t) + h * head_dim, head_dim, key_to);
  store_row(v.view().row(t) + h * value_head_dim, value_head_dim, value_to);
}

}  // namespace detail
SDPA_END_NAMESPACE

namespace sdpa {

/// One layer's key/value cache for `batch` sequences: memory for `capacity` tokens per sequence
/// is allocated (and touched) once, at construction; each step appends the new tokens' keys and
/// values, so generating a token never reallocates. Stored [batch, kv_heads, capacity, d]: each
/// head's keys are contiguous rows, read in place by attention. T may be Eigen::half or
/// Eigen::bfloat16 (README, "Storage types"): keys and values are rounded to it once, as they
/// are appended, and the decode kernels read the 16-bit rows in place, half the bytes of float.
/// T = BlockQ8_0 stores int8 blocks of 32 features with an fp16 scale each (ggml's q8_0):
/// quantised as they are appended, dequantised in registers by the decode microkernels, a
/// little over a quarter of the bytes of float. Its head dims must be multiples of 32, and its
/// views (keys(), values()) have one column per block.
template <class T>
class KVCache {
  static_assert(detail::is_storage_type<T> || is_quantized<T>,
                "sdpa::KVCache: T must be float, double, long double, Eigen::half, Eigen::bfloat16 or "
                "sdpa::BlockQ8_0");
  static constexpr Index kFeaturesPerElement = features_per_element<T>;

 public:
  /// Allocates room for `capacity` tokens in each of `batch` sequences, all empty: keys of
  /// `kv_heads` heads of `head_dim` features, values of `value_head_dim`. Throws
  /// std::invalid_argument unless every size is at least 1.
  KVCache(Index batch, Index kv_heads, Index head_dim, Index value_head_dim, Index capacity)
      : batch_(batch), kv_heads_(kv_heads), head_dim_(head_dim), value_head_dim_(value_head_dim), capacity_(capacity) {
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || value_head_dim < 1 || capacity < 1)
      detail::fail("KVCache", "batch ", batch, ", kv_heads ", kv_heads, ", head dims ", head_dim, "/", value_head_dim,
                   " and capacity ", capacity, " must all be at least 1");
    detail::check_cache_head_dims<T>("KVCache", head_dim, value_head_dim);
    key_elements_ = head_dim / kFeaturesPerElement;
    value_elements_ = value_head_dim / kFeaturesPerElement;
    const std::size_t keys = elements(key_elements_), values = elements(value_elements_);
    lengths_.assign(std::size_t(batch), 0);
    keys_.resize(keys);
    values_.resize(values);
  }

  /// Number of sequences.
  Index batch() const { return batch_; }
  /// Key/value heads per token.
  Index kv_heads() const { return kv_heads_; }
  /// Features per key head (d_k).
  Index head_dim() const { return head_dim_; }
  /// Features per value head (d_v).
  Index value_head_dim() const { return value_head_dim_; }
  /// Tokens each sequence can hold.
  Index capacity() const { return capacity_; }
  /// Tokens cached so far in `sequence`; throws std::invalid_argument outside [0, batch()).
  Index length(Index sequence) const { return lengths_[std::size_t(checked(sequence))]; }

  /// Appends n tokens to `sequence`: keys n x (kv_heads head_dim), values n x (kv_heads
  /// value_head_dim), heads side by side as a projection produces them, of any element type
  /// (rounded to T). Throws, changing nothing, when they do not fit.
  template <class DK, class DV>
  void append(Index sequence, const Eigen::MatrixBase<DK>& keys, const Eigen::MatrixBase<DV>& values) {
    const detail::Input<typename DK::Scalar> k(keys);
    const detail::Input<typename DV::Scalar> v(values);
    const Index n = k.rows(), start = length(sequence);
    detail::check_cache_tokens<T>("KVCache::append", k, v, kv_heads_, head_dim_, value_head_dim_);
    if (n > capacity_ - start)
      detail::fail("KVCache::append", "sequence ", sequence, " holds ", start, " tokens; ", n, " more exceed its capacity ",
                   capacity_);
    for (Index h = 0; h < kv_heads_; ++h)
      for (Index t = 0; t < n; ++t)
        detail::store_cache_token(k, v, t, h, head_dim_, value_head_dim_, key_row(sequence, h, start + t),
                                  value_row(sequence, h, start + t));
    lengths_[std::size_t(sequence)] = start + n;
  }

  /// The cached keys of one head of one sequence: length(sequence) x head_dim(), in place.
  /// Throws std::invalid_argument when `sequence` or `head` is out of range.
  MatrixView<const T> keys(Index sequence, Index head) const {
    return {key_row(sequence, checked_head(head), 0), length(sequence), key_elements_, key_elements_};
  }
  /// The cached values of one head of one sequence: length(sequence) x value_head_dim(), in place.
  /// Throws std::invalid_argument when `sequence` or `head` is out of range.
  MatrixView<const T> values(Index sequence, Index head) const {
    return {value_row(sequence, checked_head(head), 0), length(sequence), value_elements_, value_elements_};
  }

  /// Drops the tokens of `sequence` from position `length` on (its memory stays allocated):
  /// rolls back an append, e.g. the tokens of a rejected speculative draft. Throws
  /// std::invalid_argument unless 0 <= length <= length(sequence).
  void truncate(Index sequence, Index length) {
    const Index current = this->length(sequence);
    if (length < 0 || length > current)
      detail::fail("KVCache::truncate", "sequence ", sequence, " holds ", current, " tokens: cannot truncate it to ",
                   length);
    lengths_[std::size_t(sequence)] = length;
  }

  /// Empties `sequence` (its memory stays allocated); throws std::invalid_argument outside [0, batch()).
  void clear(Index sequence) { lengths_[std::size_t(checked(sequence))] = 0; }
  /// Empties every sequence.
  void clear() { std::fill(lengths_.begin(), lengths_.end(), 0); }

 private:
  Index checked(Index sequence) const {
    if (sequence < 0 || sequence >= batch_)
      detail::fail("KVCache", "sequence ", sequence, " is outside [0, ", batch_, ")");
    return sequence;
  }
  Index checked_head(Index head) const {
    if (head < 0 || head >= kv_heads_) detail::fail("KVCache", "head ", head, " is outside [0, ", kv_heads_, ")");
    return head;
  }
  /// batch x kv_heads x capacity x features (every size checked >= 1 above).
  std::size_t elements(Index features) const {
    return detail::cache_elements<T>("KVCache", {"batch", "kv_heads", "capacity", "features"},
                                     {batch_, kv_heads_, capacity_, features});
  }
  T* key_row(Index s, Index h, Index t) const {
    return const_cast<T*>(keys_.data()) + ((s * kv_heads_ + h) * capacity_ + t) * key_elements_;
  }
  T* value_row(Index s, Index h, Index t) const {
    return const_cast<T*>(values_.data()) + ((s * kv_heads_ + h) * capacity_ + t) * value_elements_;
  }

  Index batch_, kv_heads_, head_dim_, value_head_dim_, capacity_, key_elements_ = 0, value_elements_ = 0;
  std::vector<Index> lengths_;
  std::vector<T> keys_, values_;
};

}  // namespace sdpa
