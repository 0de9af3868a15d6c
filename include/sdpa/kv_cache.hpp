// sdpa/kv_cache.hpp - the keys and values of the tokens generated so far.
/// \file
/// KVCache: the keys and values of the tokens generated so far.
#pragma once

#include "attention.hpp"
#include "detail/validate.hpp"

#include <vector>

namespace sdpa {

/// One layer's key/value cache for `batch` sequences: memory for `capacity` tokens per sequence
/// is allocated (and touched) once, at construction; each step appends the new tokens' keys and
/// values, so generating a token never reallocates. Stored [batch, kv_heads, capacity, d]: each
/// head's keys are contiguous rows, read in place by attention.
template <class T>
class KVCache {
 public:
  /// Allocates room for `capacity` tokens in each of `batch` sequences, all empty: keys of
  /// `kv_heads` heads of `head_dim` features, values of `value_head_dim`. Throws
  /// std::invalid_argument unless every size is at least 1.
  KVCache(Index batch, Index kv_heads, Index head_dim, Index value_head_dim, Index capacity)
      : batch_(batch), kv_heads_(kv_heads), head_dim_(head_dim), value_head_dim_(value_head_dim), capacity_(capacity),
        lengths_(std::size_t(std::max<Index>(batch, 0)), 0) {
    if (batch < 1 || kv_heads < 1 || head_dim < 1 || value_head_dim < 1 || capacity < 1)
      detail::fail("KVCache", "batch ", batch, ", kv_heads ", kv_heads, ", head dims ", head_dim, "/", value_head_dim,
                   " and capacity ", capacity, " must all be at least 1");
    keys_.resize(std::size_t(batch * kv_heads * capacity * head_dim));
    values_.resize(std::size_t(batch * kv_heads * capacity * value_head_dim));
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
  /// value_head_dim), heads side by side as a projection produces them. Throws, changing
  /// nothing, when they do not fit.
  template <class DK, class DV>
  void append(Index sequence, const Eigen::MatrixBase<DK>& keys, const Eigen::MatrixBase<DV>& values) {
    const ConstRef<T> k(keys.derived()), v(values.derived());
    const Index n = k.rows(), start = length(sequence);
    if (k.cols() != kv_heads_ * head_dim_ || v.cols() != kv_heads_ * value_head_dim_ || v.rows() != n)
      detail::fail("KVCache::append", "keys are ", detail::shape(k.rows(), k.cols()), " and values ",
                   detail::shape(v.rows(), v.cols()), ": expected n x ", kv_heads_ * head_dim_, " and n x ",
                   kv_heads_ * value_head_dim_);
    if (start + n > capacity_)
      detail::fail("KVCache::append", "sequence ", sequence, " holds ", start, " tokens; ", n, " more exceed its capacity ",
                   capacity_);
    for (Index h = 0; h < kv_heads_; ++h)
      for (Index t = 0; t < n; ++t) {
        std::copy(k.row(t).data() + h * head_dim_, k.row(t).data() + (h + 1) * head_dim_, key_row(sequence, h, start + t));
        std::copy(v.row(t).data() + h * value_head_dim_, v.row(t).data() + (h + 1) * value_head_dim_,
                  value_row(sequence, h, start + t));
      }
    lengths_[std::size_t(sequence)] = start + n;
  }

  /// The cached keys of one head of one sequence: length(sequence) x head_dim(), in place.
  MatrixView<const T> keys(Index sequence, Index head) const {
    return {key_row(sequence, head, 0), length(sequence), head_dim_, head_dim_};
  }
  /// The cached values of one head of one sequence: length(sequence) x value_head_dim(), in place.
  MatrixView<const T> values(Index sequence, Index head) const {
    return {value_row(sequence, head, 0), length(sequence), value_head_dim_, value_head_dim_};
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
