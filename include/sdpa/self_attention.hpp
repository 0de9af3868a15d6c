// sdpa/self_attention.hpp - one attention layer: projections, h heads, output projection.
#pragma once

#include "attention.hpp"
#include "projection.hpp"

#include <cmath>
#include <cstdint>
#include <random>

namespace sdpa {

/// The parameters of a layer. Biases and the output projection are optional (leave empty).
///   Wq: d_model x (h d_k)    Wk: d_kv x (h d_k)    Wv: d_kv x (h d_v)    Wo: (h d_v) x d_out
/// d_kv is the width of the keys/values source: d_model for self-attention, the memory's
/// width for cross-attention.
template <class T>
struct AttentionWeights {
  Matrix<T> Wq, Wk, Wv;
  RowVector<T> bq, bk, bv;
  Matrix<T> Wo;
  RowVector<T> bo;
};

/// Multi-head attention as in "Attention Is All You Need" and torch.nn.MultiheadAttention:
/// head j attends with columns [j d_k, (j + 1) d_k) of the projected Q and K and
/// [j d_v, (j + 1) d_v) of V; the heads' outputs are concatenated and projected by Wo + bo.
///
///     auto layer = sdpa::SelfAttention<float>::random(/*d_model=*/64, /*heads=*/8, /*seed=*/1);
///     sdpa::Matrix<float> Y = layer.forward(X);           // self-attention, X: N x 64
///     sdpa::Matrix<float> Z = layer.forward(X, memory);   // cross-attention
template <class T>
class SelfAttention {
 public:
  /// One head, no biases, no output projection.
  SelfAttention(Matrix<T> Wq, Matrix<T> Wk, Matrix<T> Wv, Index heads = 1)
      : SelfAttention(AttentionWeights<T>{std::move(Wq), std::move(Wk), std::move(Wv), {}, {}, {}, {}, {}}, heads) {}

  explicit SelfAttention(AttentionWeights<T> weights, Index heads = 1) : w_(std::move(weights)), heads_(heads) {
    validate();
  }

  /// Xavier/Glorot-uniform weights from a seeded generator (the same seed gives the same layer
  /// on every platform); biases, when asked for, start at 0 as in PyTorch.
  static SelfAttention random(Index d_model, Index heads, std::uint64_t seed, bool biases = true,
                              bool output_projection = true) {
    std::mt19937_64 engine(seed);
    const auto glorot = [&](Index rows, Index cols) {
      const double limit = std::sqrt(6.0 / double(rows + cols));
      Matrix<T> m(rows, cols);
      for (Index i = 0; i < m.size(); ++i)  // 53 random bits -> [0, 1): portable, unlike <random>'s distributions
        m.data()[i] = T((double(engine() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * limit);
      return m;
    };
    AttentionWeights<T> w;
    w.Wq = glorot(d_model, d_model);
    w.Wk = glorot(d_model, d_model);
    w.Wv = glorot(d_model, d_model);
    if (biases) w.bq = w.bk = w.bv = RowVector<T>::Zero(d_model);
    if (output_projection) {
      w.Wo = glorot(d_model, d_model);
      if (biases) w.bo = RowVector<T>::Zero(d_model);
    }
    return SelfAttention(std::move(w), heads);
  }

  /// Self-attention: every token of X attends to every token of X (subject to options).
  template <class DX>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& X, const Options& options = {}) const {
    const ConstRef<T> x(X.derived());
    return run(x, x, "X", options);
  }

  /// Cross-attention: queries from X, keys and values from `memory`.
  template <class DX, class DM>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DM>& memory,
                    const Options& options = {}) const {
    const ConstRef<T> x(X.derived()), m(memory.derived());
    return run(x, m, "memory", options);
  }

  Index heads() const { return heads_; }
  Index d_model() const { return w_.Wq.rows(); }
  Index head_dim() const { return w_.Wq.cols() / heads_; }        // d_k
  Index value_head_dim() const { return w_.Wv.cols() / heads_; }  // d_v
  const AttentionWeights<T>& weights() const { return w_; }

 private:
  Matrix<T> run(const ConstRef<T>& x, const ConstRef<T>& source, const char* source_name, const Options& options) const {
    if (x.cols() != w_.Wq.rows())
      detail::fail("SelfAttention::forward", "X is ", detail::shape(x.rows(), x.cols()), " but Wq is ",
                   detail::shape(w_.Wq.rows(), w_.Wq.cols()), ": X needs d_model = ", w_.Wq.rows(), " columns");
    if (source.cols() != w_.Wk.rows())
      detail::fail("SelfAttention::forward", source_name, " is ", detail::shape(source.rows(), source.cols()),
                   " but Wk is ", detail::shape(w_.Wk.rows(), w_.Wk.cols()), ": keys and values need ", w_.Wk.rows(),
                   " columns");
    const Index dk = head_dim(), dv = value_head_dim();
    // Per-head shapes and options are checked before any projection is computed.
    detail::validate_attention("SelfAttention::forward", x.rows(), dk, source.rows(), dk, nullptr, nullptr, options);

    const Matrix<T> Q = project(x, w_.Wq, w_.bq), K = project(source, w_.Wk, w_.bk), V = project(source, w_.Wv, w_.bv);
    Matrix<T> heads_out(x.rows(), heads_ * dv);  // the heads' outputs side by side
    const MatrixView<const T> q(Q), k(K), v(V);
    const MatrixView<T> o(heads_out);
    for (Index h = 0; h < heads_; ++h)  // a head is a column slice: strided views, no copies
      detail::run_attention<T>("SelfAttention::forward", q.middle_cols(h * dk, dk), k.middle_cols(h * dk, dk),
                               v.middle_cols(h * dv, dv), o.middle_cols(h * dv, dv), options);
    if (w_.Wo.size() == 0) return heads_out;
    return project(heads_out, w_.Wo, w_.bo);
  }

  void validate() const {
    const char* fn = "SelfAttention";
    const auto s = [](const auto& m) { return detail::shape(m.rows(), m.cols()); };
    if (heads_ < 1) detail::fail(fn, "heads is ", heads_, ": it must be at least 1");
    if (w_.Wq.cols() == 0 || w_.Wq.cols() % heads_ != 0)
      detail::fail(fn, "Wq is ", s(w_.Wq), ": its ", w_.Wq.cols(), " columns must split into ", heads_,
                   " heads of d_k >= 1");
    if (w_.Wk.cols() != w_.Wq.cols())
      detail::fail(fn, "Wq is ", s(w_.Wq), " and Wk is ", s(w_.Wk), ": they need the same columns (heads x d_k)");
    if (w_.Wv.rows() != w_.Wk.rows())
      detail::fail(fn, "Wk is ", s(w_.Wk), " and Wv is ", s(w_.Wv), ": they read the same source, so need the same rows");
    if (w_.Wv.cols() == 0 || w_.Wv.cols() % heads_ != 0)
      detail::fail(fn, "Wv is ", s(w_.Wv), ": its ", w_.Wv.cols(), " columns must split into ", heads_,
                   " heads of d_v >= 1");
    const auto check_bias = [&](const char* name, const RowVector<T>& b, const Matrix<T>& W, const char* wname) {
      if (b.size() != 0 && b.size() != W.cols())
        detail::fail(fn, name, " is 1x", b.size(), " but ", wname, " is ", s(W), ": it needs ", W.cols(), " entries");
    };
    check_bias("bq", w_.bq, w_.Wq, "Wq");
    check_bias("bk", w_.bk, w_.Wk, "Wk");
    check_bias("bv", w_.bv, w_.Wv, "Wv");
    if (w_.Wo.size() != 0) {
      if (w_.Wo.rows() != w_.Wv.cols())
        detail::fail(fn, "Wo is ", s(w_.Wo), " and Wv is ", s(w_.Wv), ": Wo needs one row per concatenated value feature (",
                     w_.Wv.cols(), ")");
      check_bias("bo", w_.bo, w_.Wo, "Wo");
    } else if (w_.bo.size() != 0) {
      detail::fail(fn, "bo is 1x", w_.bo.size(), " but there is no Wo: an output bias needs an output projection");
    }
  }

  AttentionWeights<T> w_;
  Index heads_;
};

}  // namespace sdpa
