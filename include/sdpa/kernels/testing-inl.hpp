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

inline MicrokernelSet set() {
  return {V::width,           R,
          C,                  RowTiles<Arch>::max_rows,
          &score_block,       &score_softmax_block,
          &value_block,       &row_scores,
          &row_accumulate,    &elementwise<exp2_of>,
          &elementwise<exp_of>, &elementwise<tanh_of>,
          &elementwise<max_with_one>,
          &elementwise<min_with_one>};
}

}  // namespace testing
