// sdpa/kernels/testing-inl.hpp - this target's microkernels behind plain function pointers.
//
// The microkernels are inline templates compiled for their target's instructions, so code
// compiled for another ISA (a test, a benchmark) cannot call them directly. These wrappers
// are ordinary functions of the target: tests/test_microkernels.cpp calls every one of them
// at every height 1..R and compares it with a double-precision loop (XNNPACK's tester idea).
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

namespace testing {

using V = simd::Vec<float, Arch>;
constexpr int R = RegisterBlock<Arch>::rows, C = RegisterBlock<Arch>::vectors;

inline void score_block(Index rows, const float* q, Index dk, const float* kt, Index kt_ld, float* s, Index s_ld) {
  microkernels::with_rows<R>(rows, [&](auto height) {
    microkernels::score_block<V, height, C>(q, dk, kt, kt_ld, s, s_ld);
  });
}

inline void score_softmax_block(Index rows, const float* q, Index dk, const float* kt, Index kt_ld, float* p,
                                Index p_ld, float* running_max, float* running_sum, float* rescale) {
  OnlineSoftmaxRow<V> states[R];
  for (Index r = 0; r < rows; ++r) {  // the state as the loop would hold it: the sum in one lane
    float lanes[V::width] = {running_sum[r]};
    states[r].running_max = running_max[r];
    states[r].shift = std::isinf(running_max[r]) ? V::zero() : V::broadcast(running_max[r]);
    states[r].running_sum = V::load(lanes);
  }
  microkernels::with_rows<R>(rows, [&](auto height) {
    microkernels::score_softmax_block<V, height, C>(q, dk, kt, kt_ld, p, p_ld, states, rescale,
                                                    [](int, int, V s) { return s; });
  });
  for (Index r = 0; r < rows; ++r) {
    running_max[r] = states[r].running_max;
    running_sum[r] = reduce_add(states[r].running_sum);
  }
}

inline void value_block(Index rows, Index vectors, const float* p, Index p_ld, Index keys, const float* v, Index v_ld,
                        const float* rescale, float* acc, Index acc_ld) {
  microkernels::with_rows<R>(rows, [&](auto height) {
    if (vectors == C)
      microkernels::value_block<V, height, C>(p, p_ld, keys, v, v_ld, 0, rescale, acc, acc_ld);
    else
      microkernels::value_block<V, height, 1>(p, p_ld, keys, v, v_ld, 0, rescale, acc, acc_ld);
  });
}

inline void row_scores(Index rows, const float* q, Index dk, const float* k, Index k_ld, Index keys, float* s,
                       Index s_ld) {
  const RowTiles<Arch> tiles(MatrixView<const float>(k, keys, dk, k_ld), MatrixView<const float>(k, keys, dk, k_ld),
                             BlockConfig{rows, keys}, nullptr);
  tiles.scores(q, rows, 0, keys, s, s_ld);
}

inline void row_accumulate(Index rows, const float* p, Index p_ld, Index keys, const float* v, Index v_ld, Index dv,
                           const float* rescale, float* acc) {
  const RowTiles<Arch> tiles(MatrixView<const float>(v, keys, dv, v_ld), MatrixView<const float>(v, keys, dv, v_ld),
                             BlockConfig{rows, keys}, nullptr);
  tiles.accumulate(p, rows, p_ld, 0, keys, rescale, acc);
}

inline void reduce_add_each(const float* vectors, float* sums) {
  V each[V::width];
  for (int t = 0; t < V::width; ++t) each[t] = V::load(vectors + t * V::width);
  reduce_add_each(each).store(sums);
}
inline void reduce_add_one_by_one(const float* vectors, float* sums) {
  for (int t = 0; t < V::width; ++t) sums[t] = reduce_add(V::load(vectors + t * V::width));
}

template <V (*f)(V)>
void elementwise(const float* x, float* y, Index n) {
  for (Index i = 0; i < n; i += V::width) f(V::load(x + i)).store(y + i);
}
inline V exp2_of(V x) { return exp2(x); }
inline V exp_of(V x) { return exp(x); }
inline V tanh_of(V x) {  // with the exp2 of the kernels' soft cap
  return vector_tanh(x, [](V y) { return exp2_no_overflow(y); });
}
inline V max_with_one(V x) { return max(x, V::broadcast(1.0f)); }
inline V min_with_one(V x) { return min(x, V::broadcast(1.0f)); }

// Bf16Tiles' scores and P V over one key tile of `keys`, through its own packing; the results
// are copied out of its padded tiles. (Templates: instantiated in the AVX-512 target only.)
template <class A>
struct PackedBf16 {  // Bf16Tiles over rows (keys, d) as both K and V, packed
  using Tiles = Bf16Tiles<A>;
  PackedBf16(const Eigen::bfloat16* rows, Index keys, Index d, Index query_rows)
      : view(rows, keys, d, d), blocks{query_rows, keys}, packed(std::size_t(Tiles::packed_size(view, view, blocks))),
        tiles(view, view, blocks, packed.data()) {
    tiles.pack(view, view, 0, tiles.pack_tiles(view));
  }
  MatrixView<const Eigen::bfloat16> view;
  BlockConfig blocks;
  std::vector<float> packed;
  Tiles tiles;
};

template <class A = Arch>
void bf16_scores(Index rows, const Eigen::bfloat16* q, Index dk, const Eigen::bfloat16* k, Index keys, float scale,
                 float* s, Index s_ld) {
  const PackedBf16<A> k_tiles(k, keys, dk, rows);
  std::vector<float> q_rows(std::size_t(rows * dk));
  for (Index i = 0; i < rows * dk; ++i) q_rows[std::size_t(i)] = float(q[i]);
  const Index ld = round_up(keys, Bf16Tiles<A>::key_multiple);
  std::vector<float> tile(std::size_t(rows * ld));
  k_tiles.tiles.scores(k_tiles.tiles.prepare_queries(q_rows.data(), rows, scale), rows, 0, keys, tile.data(), ld);
  for (Index r = 0; r < rows; ++r) std::copy_n(tile.data() + r * ld, keys, s + r * s_ld);
}

template <class A = Arch>
void bf16_accumulate(Index rows, const float* p, Index p_ld, Index keys, const Eigen::bfloat16* v, Index dv,
                     const float* rescale, float* acc, Index acc_ld) {
  const PackedBf16<A> v_tiles(v, keys, dv, rows);
  const Index ld = round_up(keys, Bf16Tiles<A>::key_multiple), padded = v_tiles.tiles.accumulator_cols();
  std::vector<float> weights(std::size_t(rows * ld), 0.0f), sums(std::size_t(rows * padded), 0.0f);
  for (Index r = 0; r < rows; ++r) {
    std::copy_n(p + r * p_ld, keys, weights.data() + r * ld);
    std::copy_n(acc + r * acc_ld, dv, sums.data() + r * padded);
  }
  v_tiles.tiles.accumulate(weights.data(), rows, ld, 0, keys, rescale, sums.data());
  for (Index r = 0; r < rows; ++r) std::copy_n(sums.data() + r * padded, dv, acc + r * acc_ld);
}

template <class A = Arch>
MicrokernelSet set() {
  MicrokernelSet microkernel_set{V::width, R,
                                C, RowTiles<A>::max_rows,
                                &score_block, &score_softmax_block,
                                &value_block, &row_scores,
                                &row_accumulate};
  if constexpr (bf16_dot<Eigen::bfloat16, Eigen::bfloat16>) {
    microkernel_set.bf16_scores = &bf16_scores<A>;
    microkernel_set.bf16_accumulate = &bf16_accumulate<A>;
  }
  microkernel_set.reduce_add_each = &testing::reduce_add_each;
  microkernel_set.reduce_add_one_by_one = &reduce_add_one_by_one;
  microkernel_set.exp2 = &elementwise<exp2_of>;
  microkernel_set.exp = &elementwise<exp_of>;
  microkernel_set.tanh = &elementwise<tanh_of>;
  microkernel_set.max_with_one = &elementwise<max_with_one>;
  microkernel_set.min_with_one = &elementwise<min_with_one>;
  return microkernel_set;
}

}  // namespace testing
