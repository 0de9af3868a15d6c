// sdpa/detail/online_softmax.hpp - softmax over key tiles that arrive one at a time.
//
// softmax(s)_j = 2^(s_j - m) / sum_k 2^(s_k - m) for any m; the stable choice is m = max s.
// The tiled kernels never see a whole row of scores, so each row keeps a running max m and
// a running sum l of 2^(s - m). When a tile raises the max from m to m', everything summed
// so far (l and the row's output accumulator) was scaled for m and is rescaled by
// 2^(m - m'). At the end the accumulator is divided by l once (FlashAttention-2).
// Scores here are base 2 (the kernels fold log2(e) into the scale): 2^x is cheaper than e^x.
#pragma once

#include "../views.hpp"

#include <algorithm>
#include <limits>

namespace sdpa::detail {

template <class T>
struct OnlineSoftmaxRow {
  T running_max = -std::numeric_limits<T>::infinity();  // no key seen yet
  T running_sum = T(0);

  /// Folds one tile of n scores (n a multiple of V::width) into the row: each score becomes
  /// its unnormalised weight 2^(s - max) in place. Returns the factor by which the row's
  /// output accumulator must be multiplied. A row with every key masked so far keeps max =
  /// -inf and gets weights 0 (2^(-inf - -inf) would be NaN).
  template <class V, class Exp2>
  T absorb(T* scores, Index n, Exp2 exp2) {
    V tile_max = V::broadcast(-std::numeric_limits<T>::infinity());
    for (Index j = 0; j < n; j += V::width) tile_max = max(V::load(scores + j), tile_max);
    const T new_max = std::max(running_max, reduce_max(tile_max));
    if (new_max == -std::numeric_limits<T>::infinity()) {
      for (Index j = 0; j < n; j += V::width) V::zero().store(scores + j);
      return T(1);
    }
    const T rescale = new_max == running_max ? T(1) : first(exp2(V::broadcast(running_max - new_max)));
    running_max = new_max;
    const V shift = V::broadcast(new_max);
    V tile_sum = V::zero();
    for (Index j = 0; j < n; j += V::width) {
      const V weight = exp2(V::load(scores + j) - shift);
      weight.store(scores + j);
      tile_sum = tile_sum + weight;
    }
    running_sum = running_sum * rescale + reduce_add(tile_sum);
    return rescale;
  }

  /// What the accumulated output is multiplied by at the end: 1/l, and 0 for a fully masked
  /// row (DESIGN.md: its output is 0). NaN stays NaN.
  T normaliser() const { return running_sum == T(0) ? T(0) : T(1) / running_sum; }

 private:
  template <class V>
  static T first(V v) {
    T lanes[V::width];
    v.store(lanes);
    return lanes[0];
  }
};

}  // namespace sdpa::detail
