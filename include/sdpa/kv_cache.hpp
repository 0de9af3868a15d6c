// sdpa/kv_cache.hpp - the keys and values of the tokens generated so far.
/// \file
/// KVCache: the keys and values of the tokens generated so far.
#pragma once

#include "attention.hpp"
#include "detail/validate.hpp"
#include "storage.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace sdpa {

/// One layer's key/value cache for `batch` sequences: memory for `capacity` tokens per sequence
/// is allocated (and touched) once, at construction; each step appends the new tokens' keys and
/// values, so generating a token never reallocates. Stored [batch, kv_heads, capacity, d]: each
/// head's keys are contiguous rows, read in place by attention. T may be Eigen::half or
/// Eigen::bfloat16 (README, "Storage types"): keys and values are rounded to it once, as they
/// are appended, and the decode kernels read the 16-bit rows in place, half the bytes of float.
template <class T>
class KVCache {
  static_assert(detail::is_storage_type<T>,
                "sdpa::KVCache: T must be float, double, long double, Eigen::half or Eigen::bfloat16");

 public:
  /// Allocates room for `capacity` tokens in each of `batch` sequences, all empty: keys of
  /// `kv_heads` heads of `head_dim` features, values of `value_head_dim`. Throws
  /// std::invalid_argument unless every size is at least 1.
  KVCache(Index batch, Index kv_heads, Index head_dim, Index value_head_dim, Index capacity)
      : batch_(batch), kv_heads_(kv_heads), head_dim_(head_dim), value_head_dim_(value_head_dim), capacity_(capacity) {
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || value_head_dim < 1 || capacity < 1)
      detail::fail("KVCache", "batch ", batch, ", kv_heads ", kv_heads, ", head dims ", head_dim, "/", value_head_dim,
                   " and capacity ", capacity, " must all be at least 1");
    const std::size_t keys = elements(head_dim), values = elements(value_head_dim);
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
    if (k.cols() != kv_heads_ * head_dim_ || v.cols() != kv_heads_ * value_head_dim_ || v.rows() != n)
      detail::fail("KVCache::append", "keys are ", detail::shape(k.rows(), k.cols()), " and values ",
                   detail::shape(v.rows(), v.cols()), ": expected n x ", kv_heads_ * head_dim_, " and n x ",
                   kv_heads_ * value_head_dim_);
    if (n > capacity_ - start)
      detail::fail("KVCache::append", "sequence ", sequence, " holds ", start, " tokens; ", n, " more exceed its capacity ",
                   capacity_);
    for (Index h = 0; h < kv_heads_; ++h)
      for (Index t = 0; t < n; ++t) {
        const auto* key = k.view().row(t) + h * head_dim_;
        const auto* value = v.view().row(t) + h * value_head_dim_;
        const auto round = [](auto x) { return T(x); };
        std::transform(key, key + head_dim_, key_row(sequence, h, start + t), round);
        std::transform(value, value + value_head_dim_, value_row(sequence, h, start + t), round);
      }
    lengths_[std::size_t(sequence)] = start + n;
  }

  /// The cached keys of one head of one sequence: length(sequence) x head_dim(), in place.
  /// Throws std::invalid_argument when `sequence` or `head` is out of range.
  MatrixView<const T> keys(Index sequence, Index head) const {
    return {key_row(sequence, checked_head(head), 0), length(sequence), head_dim_, head_dim_};
  }
  /// The cached values of one head of one sequence: length(sequence) x value_head_dim(), in place.
  /// Throws std::invalid_argument when `sequence` or `head` is out of range.
  MatrixView<const T> values(Index sequence, Index head) const {
    return {value_row(sequence, checked_head(head), 0), length(sequence), value_head_dim_, value_head_dim_};
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
  /// batch x kv_heads x capacity x features, or a clear error when that many elements cannot
  /// be addressed (rather than a product that wraps around to a small buffer).
  std::size_t elements(Index features) const {
    constexpr Index kMost = PTRDIFF_MAX / Index(sizeof(T));
    Index total = batch_;  // every factor is >= 1, checked above
    for (const Index factor : {kv_heads_, capacity_, features}) {
      if (total > kMost / factor)
        detail::fail("KVCache", "batch ", batch_, " x kv_heads ", kv_heads_, " x capacity ", capacity_, " x ", features,
                     " features is more elements than memory can address");
      total *= factor;
    }
    return std::size_t(total);
  }
  T* key_row(Index s, Index h, Index t) const {
    return const_cast<T*>(keys_.data()) + ((s * kv_heads_ + h) * capacity_ + t) * head_dim_;
  }
  T* value_row(Index s, Index h, Index t) const {
    return const_cast<T*>(values_.data()) + ((s * kv_heads_ + h) * capacity_ + t) * value_head_dim_;
  }

  Index batch_, kv_heads_, head_dim_, value_head_dim_, capacity_;
  std::vector<Index> lengths_;
  std::vector<T> keys_, values_;
};

}  // namespace sdpa
