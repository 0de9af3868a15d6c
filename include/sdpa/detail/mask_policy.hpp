// sdpa/detail/mask_policy.hpp - what each query row may see, and how its scores are changed,
// from every kind of mask and every model variant.
//
// Causal, key lengths and a sliding window all say "row i sees a band of the keys": they
// become two numbers, key_begin(i) and key_end(i). The boolean mask and the bias differ
// element by element; ALiBi and the soft cap change every score but by formula. Tiled kernels
// visit only the key tiles inside some row's band, and mask only the tiles that straddle a
// band's edge unless a per-score change applies everywhere (FlashAttention's mask.h plays the
// same role). The definitions are in docs/design.md, "Model variants".
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

SDPA_BEGIN_NAMESPACE
namespace detail {

/// The masks and variants of one head, as views: what Options says for a 2-D call, or one
/// piece of a larger call (a (batch, head) slice of batched masks, a key range of a split
/// call, the query heads of a group decoded together).
struct HeadMasks {
  bool causal = false;
  const Index* lengths = nullptr;  // key lengths: `length_count` entries, or 1 for every row
  Index length_count = 0;
  MatrixView<const bool> mask;  // Nq x Nk, or 1 x Nk to broadcast
  Bias bias;
  Window window;
  const double* slopes = nullptr;  // this head's ALiBi slope (with head_rows: one per head of the rows)
  const double* sinks = nullptr;   // this head's sink logit (likewise)
  double softcap = 0;              // 0 = none

  // Where these rows and keys sit in the whole call. Positions (causal alignment, the
  // window, ALiBi) and key lengths are those of the whole call; mask and bias are sliced.
  Index key_offset = 0;   // the call's index of key 0 here (a piece of a split call)
  Index total_keys = -1;  // Nk of the whole call; -1: these keys are all of them
  Index head_rows = 0;    // grouped decoding: the rows are runs of head_rows tokens, one run per
                          // head (consecutive heads); 0: the rows are one head's queries

  /// The masks of a 2-D call, whose per-head lists are taken at entry `head`.
  static HeadMasks of(const Options& options, Index head = 0) {
    HeadMasks masks{options.causal, options.key_lengths.data(), Index(options.key_lengths.size()), options.mask,
                    options.bias, options.window};
    if (!options.alibi_slopes.empty()) masks.slopes = &options.alibi_slopes[std::size_t(head)];
    if (!options.sinks.empty()) masks.sinks = &options.sinks[std::size_t(head)];
    masks.softcap = options.softcap.value_or(0.0);
    return masks;
  }
};

/// The masks of head h of sequence b of a batched call: slices of the batched masks, or the
/// 2-D ones, which apply to every head.
inline HeadMasks head_masks(const Options& options, Index b, Index h) {
  HeadMasks masks = HeadMasks::of(options, h);
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
  /// `base` multiplies what is added to or compared with scores (bias, ALiBi, the cap): 1 for
  /// natural-base scores, log2(e) for base-2 ones.
  MaskPolicy(const HeadMasks& masks, Index nq, Index nk, T base)
      : nq_(nq), nk_(nk), total_(masks.total_keys >= 0 ? masks.total_keys : nk), masks_(masks), base_(base),
        cap_(T(masks.softcap) * base) {}
  MaskPolicy(const Options& options, Index nq, Index nk, T base) : MaskPolicy(HeadMasks::of(options), nq, nk, base) {}

  /// Row i's bottom-right aligned position among the call's keys, i' = i + Nk - Nq (per head
  /// when the rows are several heads' tokens).
  Index position(Index i) const {
    const Index per_head = masks_.head_rows > 0 ? masks_.head_rows : nq_;
    return (masks_.head_rows > 0 ? i % masks_.head_rows : i) + total_ - per_head;
  }

  /// Keys [key_begin(i), key_end(i)) (indices here, not in the call) may be visible to row i;
  /// no key outside is. Causal: j <= i'; window: i' - left <= j <= i' + right; key lengths: j < length.
  Index key_begin(Index i) const {
    const Index pos = position(i), left = masks_.window.left;
    const Index begin = left < pos ? pos - left : 0;  // no overflow: pos - left > 0
    return std::clamp<Index>(begin - masks_.key_offset, 0, nk_);
  }
  Index key_end(Index i) const {
    const Index pos = position(i), right = masks_.window.right;
    Index end = total_;
    if (masks_.causal) end = std::min(end, pos + 1);
    if (right < total_ - pos) end = std::min(end, pos + right + 1);  // otherwise the band ends past Nk
    if (masks_.length_count > 0) end = std::min(end, masks_.lengths[masks_.length_count == 1 ? 0 : i]);
    return std::clamp<Index>(end - masks_.key_offset, key_begin(i), nk_);
  }

  /// True when some score must be looked at one by one (a boolean mask or a bias).
  bool elementwise() const { return !masks_.mask.empty() || !masks_.bias.empty(); }
  /// True when a formula changes every score (the soft cap, ALiBi).
  bool changes_scores() const { return masks_.slopes != nullptr || cap_ > T(0); }

  /// The cap in the scores' base (0 = none): s becomes cap tanh(s / cap).
  T cap() const { return cap_; }
  /// ALiBi: row i's scores change by -slope |i' - j|; this is -slope in the scores' base (0 = none).
  T alibi_step(Index i) const { return masks_.slopes ? -T(masks_.slopes[head(i)]) * base_ : T(0); }
  /// i' - j for key index j = 0 here, in the call's positions.
  Index alibi_origin(Index i) const { return position(i) - masks_.key_offset; }
  /// The sink logit of row i's head in natural units, or -inf when there is none.
  T sink(Index i) const { return masks_.sinks ? T(masks_.sinks[head(i)]) : -std::numeric_limits<T>::infinity(); }
  bool has_sinks() const { return masks_.sinks != nullptr; }

  /// Scores of row i for keys [j0, j0 + n), in this order: capped, masked (-inf outside the
  /// band or where the boolean mask forbids), biased, ALiBi added. The plain version of what
  /// the tiled kernels do with vectors.
  void apply(Index i, Index j0, Index n, T* scores) const {
    const auto [begin, end] = visible(i, j0, n);
    if (cap_ > T(0))
      for (Index c = begin; c < end; ++c) scores[c] = cap_ * std::tanh(scores[c] / cap_);
    limit(i, j0, n, scores);
    apply_elementwise(i, j0, n, scores);
    const T step = alibi_step(i);
    if (step != T(0))
      for (Index c = begin; c < end; ++c) scores[c] += step * T(std::abs(alibi_origin(i) - (j0 + c)));
  }

  /// -inf for the scores of row i outside its band, among keys [j0, j0 + n).
  void limit(Index i, Index j0, Index n, T* scores) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    const auto [begin, end] = visible(i, j0, n);
    std::fill(scores, scores + begin, kMinusInf);
    std::fill(scores + end, scores + n, kMinusInf);
  }

  /// The boolean mask and the bias on row i's scores inside its band, keys [j0, j0 + n).
  void apply_elementwise(Index i, Index j0, Index n, T* scores) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    const auto& mask = masks_.mask;
    const Bias& bias = masks_.bias;
    if (mask.empty() && bias.empty()) return;
    const auto [begin, end] = visible(i, j0, n);
    const Index mi = mask.rows == 1 ? 0 : i;  // a 1 x Nk mask or bias broadcasts over queries
    const Index bi = bias.rows() == 1 ? 0 : i;
    for (Index c = begin; c < end; ++c) {
      if (!mask.empty() && !mask(mi, j0 + c)) {  // forbidden: the bias there is never looked at
        scores[c] = kMinusInf;
        continue;
      }
      if (bias.empty()) continue;
      const T b = T(bias(bi, j0 + c));  // -inf forbids the pair whatever its score (NaN and Inf included)
      scores[c] = b == kMinusInf ? kMinusInf : scores[c] + base_ * b;
    }
  }

 private:
  Index head(Index i) const { return masks_.head_rows > 0 ? i / masks_.head_rows : 0; }
  /// Row i's band within keys [j0, j0 + n), as offsets [begin, end) from j0.
  std::pair<Index, Index> visible(Index i, Index j0, Index n) const {
    const Index begin = std::clamp<Index>(key_begin(i) - j0, 0, n);
    return {begin, std::clamp<Index>(key_end(i) - j0, begin, n)};
  }

  Index nq_, nk_, total_;
  HeadMasks masks_;
  T base_, cap_;
};

}  // namespace detail
SDPA_END_NAMESPACE
