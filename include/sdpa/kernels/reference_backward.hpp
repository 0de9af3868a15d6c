// sdpa/kernels/reference_backward.hpp - the backward pass by its definition, one pair at a time.
//
// The forward pass computed, for query row i and key j (docs/design.md, "The backward pass"):
//   u_ij = scale q_i . k_j                  raw score
//   s_ij = f(u_ij) + bias_ij + ALiBi        f = cap tanh(u / cap), or the identity; -inf where masked
//   p_ij = exp(s_ij - lse_i)                weight (lse_i includes the sink)
//   o_i  = sum_j p_ij v_j
// Given dO = dL/dO, the chain rule gives, with D_i = dO_i . o_i:
//   dV_j = sum_i p_ij dO_i
//   ds_ij = p_ij (dO_i . v_j - D_i)        (= dbias_ij)
//   du_ij = ds_ij f'(u_ij)                 f' = 1 - tanh^2(u / cap), or 1
//   dQ_i = scale sum_j du_ij k_j,   dK_j = scale sum_i du_ij q_i
//   dsink = -sum_i exp(sink - lse_i) D_i   (the sink's weight, times dP = 0 minus D_i)
// Here each pair's (p, ds, du) is computed from that definition whenever a sum needs it: dQ row
// by row, dK and dV key by key. Nothing is stored, nothing depends on the thread count, and
// the tiled paths (backward-inl.hpp) redo through these functions the rows that did not come
// out finite. It is the oracle, not the fast path: every pair is computed twice.
#pragma once

#include "../config.hpp"
#include "../detail/mask_policy.hpp"
#include "../detail/parallel.hpp"
#include "../options.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>

SDPA_BEGIN_NAMESPACE
namespace detail {
/// The most memory the tiled backward gives its dQ partials (backward-inl.hpp): query slabs get
/// as many rows as fit. 16 MiB; tests lower it to reach several slabs on small inputs.
inline std::atomic<Index>& backward_partial_bytes() {
  static std::atomic<Index> bytes{Index(16) << 20};
  return bytes;
}
}  // namespace detail

namespace kernels {

/// What the backward pass writes. dbias (the bias's shape: Nq x Nk, or 1 x Nk summed over
/// the queries) and dsink (this head's sink logit) are written only when requested (not empty,
/// not null).
template <class T>
struct GradientViews {
  MatrixView<T> dq, dk, dv;
  MatrixView<T> dbias;
  T* dsink = nullptr;

  /// Whether dbias is requested with one row per query (rather than one row for all: a 1 x Nk
  /// bias, whose gradient sums over the queries). With one query the two are the same.
  bool dbias_per_query(Index nq) const { return !dbias.empty() && dbias.rows == nq && nq > 1; }
  /// Whether dbias is requested as one row summed over the queries (a 1 x Nk bias, or one
  /// query). Neither holds for an Nq x Nk bias with no queries: it has no row to write.
  bool dbias_summed() const { return !dbias.empty() && dbias.rows == 1; }
};

/// The inputs of one head's backward pass, all in T: Q, K, V, the forward's output O and its
/// LSEs (natural log, Nq of them), dO, the scale and the head's masks.
template <class T>
struct BackwardInputs {
  MatrixView<const T> q, k, v, o, d_out;
  const T* lse;
  double scale;
  detail::HeadMasks masks;
};

/// The three quantities of pair (i, j) that the gradients are sums of.
template <class T>
struct PairGradient {
  T p = T(0);   // the weight p_ij
  T ds = T(0);  // dL/ds_ij, the gradient of the score after the cap (and of the bias)
  T du = T(0);  // dL/du_ij, the gradient of the raw score
};

template <class T>
class ReferenceBackward {
 public:
  ReferenceBackward(const BackwardInputs<T>& in, const T* row_dots)
      : in_(in), d_(row_dots), mask_(in.masks, in.q.rows, in.k.rows, T(1)), cap_(T(in.masks.softcap)) {}

  /// D_i = dO_i . o_i, the term every gradient of row i's scores subtracts.
  static T row_dot(const BackwardInputs<T>& in, Index i) { return dot(in.d_out.row(i), in.o.row(i), in.o.cols); }

  /// p, ds and du of pair (i, j), from the definition. A pair of weight 0 (masked, or too
  /// unlikely for exp) has all three 0, whatever V holds there.
  PairGradient<T> pair(Index i, Index j) const {
    if (in_.lse[i] == -std::numeric_limits<T>::infinity()) return {};  // the row sees no key
    T u = T(0);  // the query scaled first, as on every path: (scale q_i) . k_j
    for (Index e = 0; e < in_.q.cols; ++e) u += T(in_.scale) * in_.q(i, e) * in_.k(j, e);
    T s = u;
    mask_.apply(i, j, 1, &s);  // the cap, -inf where masked, the bias, ALiBi
    if (s == -std::numeric_limits<T>::infinity()) return {};
    PairGradient<T> g;
    g.p = std::exp(s - in_.lse[i]);
    if (g.p == T(0)) return {};
    g.ds = g.p * (dot(in_.d_out.row(i), in_.v.row(j), in_.v.cols) - d_[i]);
    g.du = g.ds;
    if (cap_ > T(0)) {
      const T t = std::tanh(u / cap_);
      g.du *= T(1) - t * t;
    }
    return g;
  }

  /// dQ_i = scale sum_j du_ij k_j, and row i of a full (Nq x Nk) dbias.
  void query_row(Index i, const GradientViews<T>& out) const {
    T* dq = out.dq.row(i);
    std::fill(dq, dq + out.dq.cols, T(0));
    const bool full_dbias = out.dbias_per_query(in_.q.rows);
    for (Index j = 0; j < in_.k.rows; ++j) {
      const PairGradient<T> g = pair(i, j);
      if (full_dbias) out.dbias(i, j) = g.ds;
      if (g.du == T(0)) continue;
      const T* k = in_.k.row(j);
      for (Index e = 0; e < out.dq.cols; ++e) dq[e] += g.du * k[e];
    }
    for (Index e = 0; e < out.dq.cols; ++e) dq[e] *= T(in_.scale);
  }

  /// dK_j = scale sum_i du_ij q_i and dV_j = sum_i p_ij dO_i, and entry j of a 1 x Nk dbias.
  void key_row(Index j, const GradientViews<T>& out) const {
    T* dk = out.dk.row(j);
    T* dv = out.dv.row(j);
    std::fill(dk, dk + out.dk.cols, T(0));
    std::fill(dv, dv + out.dv.cols, T(0));
    const bool broadcast_dbias = out.dbias_summed();
    T dbias = T(0);
    for (Index i = 0; i < in_.q.rows; ++i) {
      const PairGradient<T> g = pair(i, j);
      dbias += g.ds;
      if (g.p == T(0)) continue;
      const T* q = in_.q.row(i);
      const T* d_out = in_.d_out.row(i);
      for (Index e = 0; e < out.dk.cols; ++e) dk[e] += g.du * q[e];
      for (Index e = 0; e < out.dv.cols; ++e) dv[e] += g.p * d_out[e];
    }
    for (Index e = 0; e < out.dk.cols; ++e) dk[e] *= T(in_.scale);
    if (broadcast_dbias) out.dbias(0, j) = dbias;
  }

  /// dsink = -sum_i exp(sink - lse_i) D_i, over the rows in order.
  T sink_gradient() const {
    T sum = T(0);
    for (Index i = 0; i < in_.q.rows; ++i)
      if (in_.lse[i] != -std::numeric_limits<T>::infinity()) sum -= std::exp(mask_.sink(i) - in_.lse[i]) * d_[i];
    return sum;
  }

 private:
  static T dot(const T* a, const T* b, Index n) {
    T sum = T(0);
    for (Index e = 0; e < n; ++e) sum += a[e] * b[e];
    return sum;
  }

  BackwardInputs<T> in_;
  const T* d_;
  detail::MaskPolicy<T> mask_;
  T cap_;
};

/// Kernel::Reference's backward pass of one head: dQ by query rows, dK and dV by keys, in
/// parallel, each row computed whole by one thread. `row_dots`: scratch for Nq values.
template <class T>
void reference_backward(const BackwardInputs<T>& in, const GradientViews<T>& out, const Options& options,
                        T* row_dots) {
  for (Index i = 0; i < in.q.rows; ++i) row_dots[i] = ReferenceBackward<T>::row_dot(in, i);
  const ReferenceBackward<T> backward(in, row_dots);
  constexpr Index kRowsPerTask = 16;
  const Index rows = in.q.rows + in.k.rows, tasks = (rows + kRowsPerTask - 1) / kRowsPerTask;
  detail::parallel_for(tasks, options, [&](Index first, Index end) {
    for (Index r = first * kRowsPerTask; r < std::min(rows, end * kRowsPerTask); ++r)
      r < in.q.rows ? backward.query_row(r, out) : backward.key_row(r - in.q.rows, out);
  });
  if (out.dsink) *out.dsink = backward.sink_gradient();
}

}  // namespace kernels
SDPA_END_NAMESPACE
