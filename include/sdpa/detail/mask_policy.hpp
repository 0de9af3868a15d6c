// sdpa/detail/mask_policy.hpp - what each query row may see, from every kind of mask.
//
// Causal and key lengths both say "row i sees a prefix of the keys": they become one number,
// key_end(i). The boolean mask and the bias differ element by element and are applied to a
// tile of scores only when present. Tiled kernels skip key tiles past every row's key_end
// and mask only the tiles that straddle one (FlashAttention's mask.h plays the same role).
#pragma once

#include "../options.hpp"

#include <algorithm>
#include <limits>

namespace sdpa::detail {

template <class T>
class MaskPolicy {
 public:
  /// `bias_factor` multiplies the bias: 1 for natural-base scores, log2(e) for base-2 ones.
  MaskPolicy(const Options& options, Index nq, Index nk, T bias_factor)
      : nq_(nq), nk_(nk), causal_(options.causal), lengths_(options.key_lengths), mask_(options.mask),
        bias_(options.bias), bias_factor_(bias_factor) {}

  /// Keys [0, key_end(i)) may be visible to row i; keys from key_end(i) on never are.
  /// Causal is bottom-right aligned: row i sees key j iff j <= i + (Nk - Nq).
  Index key_end(Index i) const {
    Index end = nk_;
    if (causal_) end = std::clamp<Index>(i + (nk_ - nq_) + 1, 0, nk_);
    if (!lengths_.empty()) end = std::min(end, lengths_[lengths_.size() == 1 ? 0 : std::size_t(i)]);
    return end;
  }

  /// True when some score must be looked at one by one (a boolean mask or a bias).
  bool elementwise() const { return !mask_.empty() || !bias_.empty(); }

  /// Scores of row i for keys [j0, j0 + n): masked ones become -inf, the bias is added.
  void apply(Index i, Index j0, Index n, T* scores) const {
    constexpr T kMinusInf = -std::numeric_limits<T>::infinity();
    const Index visible = std::clamp<Index>(key_end(i) - j0, 0, n);
    std::fill(scores + visible, scores + n, kMinusInf);
    if (!mask_.empty()) {
      const Index mi = mask_.rows == 1 ? 0 : i;  // a 1 x Nk mask broadcasts over queries
      for (Index c = 0; c < visible; ++c)
        if (!mask_(mi, j0 + c)) scores[c] = kMinusInf;
    }
    if (!bias_.empty()) {
      const Index bi = bias_.rows() == 1 ? 0 : i;
      for (Index c = 0; c < visible; ++c) scores[c] += bias_factor_ * T(bias_(bi, j0 + c));
    }
  }

 private:
  Index nq_, nk_;
  bool causal_;
  const std::vector<Index>& lengths_;
  MatrixView<const bool> mask_;
  const Bias& bias_;
  T bias_factor_;
};

}  // namespace sdpa::detail
