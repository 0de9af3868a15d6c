// sdpa/detail/mask_policy.hpp - what each query row may see, from every kind of mask.
//
// Causal and key lengths both say "row i sees a prefix of the keys": they become one number,
// key_end(i). The boolean mask and the bias differ element by element and are applied to a
// tile of scores only when present. Tiled kernels skip key tiles past every row's key_end
// and mask only the tiles that straddle one (FlashAttention's mask.h plays the same role).
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#include <algorithm>
#include <limits>

SDPA_BEGIN_NAMESPACE
namespace detail {

/// The masks of one head, as views: what Options says for a 2-D call, or one piece of a
/// larger call (a (batch, head) slice of batched masks, a key range of a split decode).
struct HeadMasks {
  bool causal = false;
  const Index* lengths = nullptr;  // key lengths: `length_count` entries, or 1 for every row
  Index length_count = 0;
  MatrixView<const bool> mask;  // Nq x Nk, or 1 x Nk to broadcast
  Bias bias;

  static HeadMasks of(const Options& options) {
    return {options.causal, options.key_lengths.data(), Index(options.key_lengths.size()), options.mask,
            options.bias};
  }
};

/// The masks of head h of sequence b of a batched call: slices of the batched masks, or the
/// 2-D ones, which apply to every head.
inline HeadMasks head_masks(const Options& options, Index b, Index h) {
  HeadMasks masks = HeadMasks::of(options);
  if (!options.sequence_lengths.empty()) {
    masks.lengths = &options.sequence_lengths[std::size_t(b)];
    masks.length_count = 1;
  }
  const auto slice = [&](const auto& t) {
    return t.head(t.batch == 1 ? 0 : b, t.heads == 1 ? 0 : h);  // rows == 1 broadcasts over queries
  };
  if (!options.batch_mask.empty()) masks.mask = slice(options.batch_mask);
  if (!options.batch_bias.empty()) masks.bias = Bias(MatrixView<const float>(slice(options.batch_bias)));
  return masks;
}

template <class T>
class MaskPolicy {
 public:
  /// `bias_factor` multiplies the bias: 1 for natural-base scores, log2(e) for base-2 ones.
  MaskPolicy(const HeadMasks& masks, Index nq, Index nk, T bias_factor)
      : nq_(nq), nk_(nk), masks_(masks), bias_factor_(bias_factor) {}
  MaskPolicy(const Options& options, Index nq, Index nk, T bias_factor)
      : MaskPolicy(HeadMasks::of(options), nq, nk, bias_factor) {}

  /// Keys [0, key_end(i)) may be visible to row i; keys from key_end(i) on never are.
  /// Causal is bottom-right aligned: row i sees key j iff j <= i + (Nk - Nq).
  Index key_end(Index i) const {
    Index end = nk_;
    if (masks_.causal) end = std::clamp<Index>(i + (nk_ - nq_) + 1, 0, nk_);
    if (masks_.length_count > 0) end = std::min(end, masks_.lengths[masks_.length_count == 1 ? 0 : i]);
    return end;
  }

  /// True when some score must be looked at one by one (a boolean mask or a bias).
  bool elementwise() const { return !masks_.mask.empty() || !masks_.bias.empty(); }

  /// Scores of row i for keys [j0, j0 + n): masked ones become -inf, the bias is added.
  void apply(Index i, Index j0, Index n, T* scores) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    const Index visible = std::clamp<Index>(key_end(i) - j0, 0, n);
    std::fill(scores + visible, scores + n, kMinusInf);
    const auto& mask = masks_.mask;
    const Bias& bias = masks_.bias;
    if (mask.empty() && bias.empty()) return;
    const Index mi = mask.rows == 1 ? 0 : i;  // a 1 x Nk mask or bias broadcasts over queries
    const Index bi = bias.rows() == 1 ? 0 : i;
    for (Index c = 0; c < visible; ++c) {
      if (!mask.empty() && !mask(mi, j0 + c)) {  // forbidden: the bias there is never looked at
        scores[c] = kMinusInf;
        continue;
      }
      if (bias.empty()) continue;
      const T b = T(bias(bi, j0 + c));  // -inf forbids the pair whatever its score (NaN and Inf included)
      scores[c] = b == kMinusInf ? kMinusInf : scores[c] + bias_factor_ * b;
    }
  }

 private:
  Index nq_, nk_;
  HeadMasks masks_;
  T bias_factor_;
};

}  // namespace detail
SDPA_END_NAMESPACE
