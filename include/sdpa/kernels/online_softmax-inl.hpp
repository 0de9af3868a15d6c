// sdpa/kernels/online_softmax-inl.hpp - softmax over key tiles that arrive one at a time.
//
// softmax(s)_j = 2^(s_j - m) / sum_k 2^(s_k - m) for any m; the stable choice is m = max s.
// The tiled kernels never see a whole row of scores, so each row keeps a running max m and
// a running sum l of 2^(s - m). When a tile raises the max from m to m', everything summed
// so far (l and the row's output accumulator) was scaled for m and is rescaled by
// 2^(m - m'). At the end the accumulator is divided by l once (FlashAttention-2).
// Scores here are base 2 (the kernels fold log2(e) into the scale): 2^x is cheaper than e^x.
//
// The sum is kept as one partial sum per lane and added across lanes once, at the end.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

template <class V>
struct OnlineSoftmaxRow {
  using T = typename V::value_type;
  T running_max;    // -inf until a visible key has been seen
  V shift;          // running_max in every lane, or 0 while it is -inf
  V running_sum;    // one partial sum per lane

  // Written out (not default member initialisers) so that the constructor is defined here,
  // inside the target's attributes: an implicit one would be compiled without them.
  OnlineSoftmaxRow() : running_max(-std::numeric_limits<T>::infinity()), shift(V::zero()), running_sum(V::zero()) {}

  /// Step 1 of folding in a tile whose largest score is tile_max: raises the running max and
  /// returns the shift the tile's weights 2^(s - shift) use; `rescale` receives the factor for
  /// everything accumulated so far, 2^(old max - new max). Most tiles leave the max where it
  /// was (rescale 1, no exp). While no visible key has been seen the max is -inf and the
  /// shift 0: masked scores weigh 2^-inf = 0, where 2^(-inf - -inf) would have been NaN.
  template <class Exp2>
  V raise_max(T tile_max, Exp2 exp2, V& rescale) {
    if (!(tile_max > running_max)) {  // also NaN: its weights come out NaN below
      rescale = V::broadcast(T(1));
      return shift;
    }
    rescale = exp2(V::broadcast(running_max) - V::broadcast(tile_max));  // 2^-inf = 0 for the first visible tile
    running_max = tile_max;
    shift = V::broadcast(tile_max);
    return shift;
  }

  /// Step 2: the tile's weights have been computed; add their (per-lane) sum.
  void add(V tile_sum, V rescale) { running_sum = running_sum * rescale + tile_sum; }

  /// Folds one tile of n scores (n a multiple of V::width) into the row: each score becomes
  /// its unnormalised weight 2^(s - max) in place. Returns the rescale factor of raise_max.
  template <class Exp2>
  T absorb(T* scores, Index n, Exp2 exp2) {
    V tile_max = V::broadcast(-std::numeric_limits<T>::infinity());
    for (Index j = 0; j < n; j += V::width) tile_max = max(V::load(scores + j), tile_max);
    V rescale;
    const V tile_shift = raise_max(reduce_max(tile_max), exp2, rescale);
    V tile_sum = V::zero();
    for (Index j = 0; j < n; j += V::width) {
      const V weight = exp2(V::load(scores + j) - tile_shift);
      weight.store(scores + j);
      tile_sum = tile_sum + weight;
    }
    add(tile_sum, rescale);
    return first_lane(rescale);
  }

  /// What the accumulated output is multiplied by at the end: 1/l, and 0 for a fully masked
  /// row (docs/design.md: its output is 0). NaN stays NaN.
  T normaliser() const {
    const T sum = reduce_add(running_sum);
    return sum == T(0) ? T(0) : T(1) / sum;
  }

  /// log2 of the sum of 2^s over the row's visible scores (-inf when there are none): with
  /// base-2 scores s = log2(e) x, this is log2(e) times the natural log-sum-exp of x.
  T log2_sum() const {
    const T sum = reduce_add(running_sum);
    return sum == T(0) ? -std::numeric_limits<T>::infinity() : running_max + std::log2(sum);
  }

  static T first_lane(V v) {
    T lanes[V::width];
    v.store(lanes);
    return lanes[0];
  }
};

