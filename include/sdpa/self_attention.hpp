// sdpa/self_attention.hpp - one attention layer: projections, h heads, output projection.
/// \file
/// SelfAttention, a multi-head attention layer, and its AttentionWeights.
#pragma once

#include "attention.hpp"
#include "backward.hpp"
#include "kv_cache.hpp"
#include "paged_kv_cache.hpp"
#include "projection.hpp"

#include <cmath>
#include <cstdint>
#include <random>
#include <string>

namespace sdpa {

/// The parameters of a layer. Biases and the output projection are optional (leave empty).
///
///     Wq: d_model x (h d_k)    Wk: d_kv x (h d_k)    Wv: d_kv x (h d_v)    Wo: (h d_v) x d_out
///
/// d_kv is the width of the keys/values source: d_model for self-attention, the memory's
/// width for cross-attention.
template <class T>
struct AttentionWeights {
  /// The query, key and value projections: d_model x (h d_k), d_kv x (kv_heads d_k) and
  /// d_kv x (kv_heads d_v), where kv_heads = h unless the layer is grouped-query.
  /// @{
  Matrix<T> Wq, Wk, Wv;
  /// @}
  /// The biases of the query, key and value projections: empty (none) or one entry per
  /// column of Wq, Wk, Wv.
  /// @{
  RowVector<T> bq, bk, bv;
  /// @}
  /// The output projection; empty = none (the layer returns the heads' outputs side by side).
  /// @{
  Matrix<T> Wo;
  /// @}
  /// The bias of the output projection: empty (none) or one entry per column of Wo (needs Wo).
  /// @{
  RowVector<T> bo;
  /// @}
};

/// The gradients of a layer's output with respect to its inputs and parameters
/// (SelfAttention::backward).
template <class T>
struct LayerGradients {
  /// The queries' input X: N x d_model (for self-attention, through the keys and values too).
  Matrix<T> dX;
  /// Cross-attention's memory: M x d_kv; empty for self-attention.
  Matrix<T> dmemory;
  /// dWq, dWk, dWv, dbq, dbk, dbv, dWo, dbo, in the shapes of the layer's own parameters
  /// (empty where the layer has none).
  AttentionWeights<T> weights;
};

}  // namespace sdpa

SDPA_BEGIN_NAMESPACE

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

  /// `kv_heads` < heads makes grouped-query attention: Wk and Wv then have kv_heads x d
  /// columns and query head h reads key/value head h / (heads / kv_heads). 0 means `heads`.
  explicit SelfAttention(AttentionWeights<T> weights, Index heads = 1, Index kv_heads = 0)
      : w_(std::move(weights)), heads_(heads), kv_heads_(kv_heads == 0 ? heads : kv_heads) {
    validate();
  }

  /// Xavier/Glorot-uniform weights from a seeded generator (the same seed gives the same layer
  /// on every platform); biases, when asked for, start at 0 as in PyTorch.
  static SelfAttention random(Index d_model, Index heads, std::uint64_t seed, bool biases = true,
                              bool output_projection = true, Index kv_heads = 0) {
    if (kv_heads == 0) kv_heads = heads;
    if (d_model < 1 || heads < 1 || kv_heads < 1 || d_model % heads != 0)
      detail::fail("SelfAttention::random", "d_model ", d_model, " must split into ", heads, " heads (kv_heads ",
                   kv_heads, ")");
    const Index kv_width = kv_heads * (d_model / heads);
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
    w.Wk = glorot(d_model, kv_width);
    w.Wv = glorot(d_model, kv_width);
    if (biases) {
      w.bq = RowVector<T>::Zero(d_model);
      w.bk = w.bv = RowVector<T>::Zero(kv_width);
    }
    if (output_projection) {
      w.Wo = glorot(d_model, d_model);
      if (biases) w.bo = RowVector<T>::Zero(d_model);
    }
    return SelfAttention(std::move(w), heads, kv_heads);
  }

  /// Self-attention: every token of X attends to every token of X (subject to options).
  template <class DX>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& X, const Options& options = {}) const {
    const detail::Input<T> x(X);
    return run(x, x, "X", options);
  }

  /// Cross-attention: queries from X, keys and values from `memory`.
  template <class DX, class DM>
  Matrix<T> forward(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DM>& memory,
                    const Options& options = {}) const {
    const detail::Input<T> x(X), m(memory);
    return run(x, m, "memory", options);
  }

  /// The gradients of L = sum(dY * forward(X, options)): of X and of every parameter. The
  /// forward is computed again inside (the layer keeps no activations), then each head's
  /// backward pass (attention_backward) and the projections' gradients: dW = X^T dQ, db =
  /// sum over tokens, dX = dQ Wq^T + dK Wk^T + dV Wv^T. Grouped-query heads sum their dK and
  /// dV. Q, K, V, X and dY are float, double or long double.
  template <class DX, class DY>
  LayerGradients<T> backward(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DY>& dY,
                             const Options& options = {}) const {
    const detail::Input<T> x(X), dy(dY);
    return run_backward(x, x, true, dy, options);
  }

  /// The gradients of L = sum(dY * forward(X, memory, options)): of X, of the memory and of
  /// every parameter.
  template <class DX, class DM, class DY>
  LayerGradients<T> backward(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DM>& memory,
                             const Eigen::MatrixBase<DY>& dY, const Options& options = {}) const {
    const detail::Input<T> x(X), m(memory), dy(dY);
    return run_backward(x, m, false, dy, options);
  }

  /// Generation: attends the new tokens X_new (n x d_model) of `sequence` to everything in
  /// `cache` plus themselves (bottom-right causal), after appending their keys and values to
  /// the cache. Feeding a prompt in one step and then one token per step gives the outputs of
  /// one causal pass over the whole sequence. Options' masks, if any, are Nq x Nk with Nk the
  /// cached length after the append. The cache may hold a 16-bit type C under a float (or
  /// 16-bit) layer: keys and values are rounded to C as they are appended.
  template <class DX, class C>
  Matrix<T> step(const Eigen::MatrixBase<DX>& X_new, KVCache<C>& cache, Index sequence = 0,
                 const Options& options = {}) const {
    return step_into_cache(X_new, cache, sequence, options, cache.capacity() - cache.length(sequence),
                           "the cache's capacity " + std::to_string(cache.capacity()));
  }

  /// step() with a paged cache: `sequence` is one of its sequences (PagedKVCache::add_sequence,
  /// fork); the new tokens' keys and values go into its pages (a shared, partly filled last
  /// page is copied first), and attention reads the pages in place.
  template <class DX, class C>
  Matrix<T> step(const Eigen::MatrixBase<DX>& X_new, PagedKVCache<C>& cache, Index sequence,
                 const Options& options = {}) const {
    return step_into_cache(X_new, cache, sequence, options, cache.room(sequence),
                           "the room of its pages and the free ones (" + std::to_string(cache.room(sequence)) +
                               " tokens)");
  }

  /// Query heads (h).
  Index heads() const { return heads_; }
  /// Key/value heads: heads() unless grouped-query.
  Index kv_heads() const { return kv_heads_; }
  /// Features per input token: the rows of Wq.
  Index d_model() const { return w_.Wq.rows(); }
  /// Features per query and key head (d_k).
  Index head_dim() const { return w_.Wq.cols() / heads_; }           // d_k
  /// Features per value head (d_v).
  Index value_head_dim() const { return w_.Wv.cols() / kv_heads_; }  // d_v
  /// The layer's parameters.
  const AttentionWeights<T>& weights() const { return w_; }

 private:
  void check_input(const detail::Input<T>& x, const char* function, const char* name) const {
    if (x.cols() != w_.Wq.rows())
      detail::fail(function, name, " is ", detail::shape(x.rows(), x.cols()), " but Wq is ",
                   detail::shape(w_.Wq.rows(), w_.Wq.cols()), ": it needs d_model = ", w_.Wq.rows(), " columns");
  }

  /// step() for either cache: `room` tokens fit, `what_fits` says what limits them.
  template <class DX, class Cache>
  Matrix<T> step_into_cache(const Eigen::MatrixBase<DX>& X_new, Cache& cache, Index sequence, const Options& options,
                            Index room, const std::string& what_fits) const {
    using C = std::remove_const_t<std::remove_pointer_t<decltype(cache.keys(sequence, 0).row(0))>>;
    detail::check_storage<T, C>();
    const detail::Input<T> x(X_new);
    const char* fn = "SelfAttention::step";
    if (cache.kv_heads() != kv_heads_ || cache.head_dim() != head_dim() || cache.value_head_dim() != value_head_dim())
      detail::fail(fn, "the cache holds ", cache.kv_heads(), " heads of ", cache.head_dim(), "/", cache.value_head_dim(),
                   " but the layer has ", kv_heads_, " of ", head_dim(), "/", value_head_dim());
    check_input(x, fn, "X_new");
    const Index nk = cache.length(sequence) + x.rows();
    if (x.rows() > room)
      detail::fail(fn, "sequence ", sequence, " holds ", cache.length(sequence), " tokens; ", x.rows(),
                   " more exceed ", what_fits);
    Options causal = options;
    causal.causal = true;
    detail::validate_attention<compute_type<T>>(fn, x.rows(), head_dim(), nk, head_dim(), nullptr, nullptr, causal,
                                                heads_);
    detail::reject_batched_options(fn, causal);
    // All or nothing: if anything below throws (bad_alloc, a throwing parallel_for), the
    // cache is rolled back to the length it had, so that a retry computes the same result.
    const Index length = cache.length(sequence);
    const auto X = x.map();
    cache.append(sequence, project(X, w_.Wk, w_.bk), project(X, w_.Wv, w_.bv));
    try {
      const Matrix<T> Q = project(X, w_.Wq, w_.bq);
      if constexpr (std::is_same_v<Cache, PagedKVCache<C>>) {  // every head at once, page by page
        Matrix<T> heads_out(Q.rows(), heads_ * value_head_dim());
        detail::run_paged_heads<T, C>(fn, MatrixView<const T>(Q), cache, sequence, MatrixView<T>(heads_out), causal);
        return output_projection(heads_out);
      } else {
        return attend_and_project(
            Q, [&](Index kv) { return std::pair(cache.keys(sequence, kv), cache.values(sequence, kv)); }, causal);
      }
    } catch (...) {
      cache.truncate(sequence, length);
      throw;
    }
  }

  Matrix<T> run(const detail::Input<T>& x, const detail::Input<T>& source, const char* source_name,
                const Options& options) const {
    check_call(x, source, source_name, options, "SelfAttention::forward");
    const Matrix<T> Q = project(x.map(), w_.Wq, w_.bq), K = project(source.map(), w_.Wk, w_.bk),
                    V = project(source.map(), w_.Wv, w_.bv);
    const MatrixView<const T> k(K), v(V);
    return attend_and_project(Q, [&](Index kv) {
      return std::pair(k.middle_cols(kv * head_dim(), head_dim()), v.middle_cols(kv * value_head_dim(), value_head_dim()));
    }, options);
  }

  /// The checks forward() makes, for `function` (source: X, or the memory).
  void check_call(const detail::Input<T>& x, const detail::Input<T>& source, const char* source_name,
                  const Options& options, const char* function) const {
    check_input(x, function, "X");
    if (source.cols() != w_.Wk.rows())
      detail::fail(function, source_name, " is ", detail::shape(source.rows(), source.cols()), " but Wk is ",
                   detail::shape(w_.Wk.rows(), w_.Wk.cols()), ": keys and values need ", w_.Wk.rows(), " columns");
    // Per-head shapes and options are checked before any projection is computed.
    detail::validate_attention<compute_type<T>>(function, x.rows(), head_dim(), source.rows(), head_dim(), nullptr,
                                                nullptr, options, heads_);
    detail::reject_batched_options(function, options);
  }

  LayerGradients<T> run_backward(const detail::Input<T>& x, const detail::Input<T>& source, bool self,
                                 const detail::Input<T>& dy, const Options& options) const {
    static_assert(detail::has_backward<T>, "sdpa::SelfAttention::backward: the layer must be float, double or long double");
    const char* fn = "SelfAttention::backward";
    check_call(x, source, self ? "X" : "memory", options, fn);
    const Index n = x.rows(), m = source.rows(), dk = head_dim(), dv = value_head_dim();
    const Index width = w_.Wo.size() != 0 ? w_.Wo.cols() : heads_ * dv;
    if (dy.rows() != n || dy.cols() != width)
      detail::fail(fn, "dY is ", detail::shape(dy.rows(), dy.cols()), " but the layer's output is ",
                   detail::shape(n, width));
    const auto X = x.map(), M = source.map(), dY = dy.map();
    // The projections are [1, tokens, heads, d] views: the batched calls take the heads
    // (grouped-query ones too) and their masks. First the forward again, with its LSEs.
    using In = TensorView<const T>;
    using Out = TensorView<T>;
    const Matrix<T> Q = project(X, w_.Wq, w_.bq), K = project(M, w_.Wk, w_.bk), V = project(M, w_.Wv, w_.bv);
    Matrix<T> heads_out(n, heads_ * dv), lse(heads_, n);
    const In q = In::bnhd(Q.data(), 1, n, heads_, dk), k = In::bnhd(K.data(), 1, m, kv_heads_, dk),
             v = In::bnhd(V.data(), 1, m, kv_heads_, dv);
    attention<T, T>(q, k, v, Out::bnhd(heads_out.data(), 1, n, heads_, dv), Out::bhnd(lse.data(), 1, heads_, n, 1),
                    options);
    // back through the output projection
    LayerGradients<T> g;
    Matrix<T> d_heads;
    if (w_.Wo.size() != 0) {
      g.weights.Wo.noalias() = heads_out.transpose() * dY;
      if (w_.bo.size() != 0) g.weights.bo = dY.colwise().sum();
      d_heads.noalias() = dY * w_.Wo.transpose();
    } else {
      d_heads = dY;
    }
    // the heads' backward pass (a group's dK and dV summed over its query heads)
    Matrix<T> dQ(n, heads_ * dk), dK(m, kv_heads_ * dk), dV(m, kv_heads_ * dv);
    attention_backward<T>(q, k, v, In::bnhd(heads_out.data(), 1, n, heads_, dv), In::bhnd(lse.data(), 1, heads_, n, 1),
                          In::bnhd(d_heads.data(), 1, n, heads_, dv), Out::bnhd(dQ.data(), 1, n, heads_, dk),
                          Out::bnhd(dK.data(), 1, m, kv_heads_, dk), Out::bnhd(dV.data(), 1, m, kv_heads_, dv), options);
    // back through the projections
    g.weights.Wq.noalias() = X.transpose() * dQ;
    g.weights.Wk.noalias() = M.transpose() * dK;
    g.weights.Wv.noalias() = M.transpose() * dV;
    if (w_.bq.size() != 0) g.weights.bq = dQ.colwise().sum();
    if (w_.bk.size() != 0) g.weights.bk = dK.colwise().sum();
    if (w_.bv.size() != 0) g.weights.bv = dV.colwise().sum();
    Matrix<T> d_source = dK * w_.Wk.transpose();
    d_source.noalias() += dV * w_.Wv.transpose();
    g.dX.noalias() = dQ * w_.Wq.transpose();
    if (self)
      g.dX += d_source;
    else
      g.dmemory = std::move(d_source);
    return g;
  }

  /// Head h of Q attends to key/value head h / (heads / kv_heads), given by kv_of(kv) as a
  /// (keys, values) pair of views; the heads' outputs, side by side, go through Wo + bo.
  template <class KVOf>
  Matrix<T> attend_and_project(const Matrix<T>& Q, const KVOf& kv_of, const Options& options) const {
    const Index dk = head_dim(), dv = value_head_dim(), group = heads_ / kv_heads_;
    Matrix<T> heads_out(Q.rows(), heads_ * dv);  // the heads' outputs side by side
    const MatrixView<const T> q(Q);
    const MatrixView<T> o(heads_out);
    for (Index h = 0; h < heads_; ++h) {  // a head is a column slice: strided views, no copies
      const auto [k, v] = kv_of(h / group);
      using S = std::remove_const_t<std::remove_pointer_t<decltype(k.row(0))>>;  // the cache's storage type
      detail::run_attention<T, S>("SelfAttention", q.middle_cols(h * dk, dk), k, v, o.middle_cols(h * dv, dv), options,
                                  nullptr, nullptr, nullptr, nullptr, {h, heads_});
    }
    return output_projection(heads_out);
  }

  /// The heads' outputs, side by side, through Wo + bo (as they are, without Wo).
  Matrix<T> output_projection(Matrix<T>& heads_out) const {
    if (w_.Wo.size() == 0) return std::move(heads_out);
    return project(heads_out, w_.Wo, w_.bo);
  }

  void validate() const {
    const char* fn = "SelfAttention";
    const auto s = [](const auto& m) { return detail::shape(m.rows(), m.cols()); };
    if (heads_ < 1) detail::fail(fn, "heads is ", heads_, ": it must be at least 1");
    if (w_.Wq.cols() == 0 || w_.Wq.cols() % heads_ != 0)
      detail::fail(fn, "Wq is ", s(w_.Wq), ": its ", w_.Wq.cols(), " columns must split into ", heads_,
                   " heads of d_k >= 1");
    if (kv_heads_ < 1 || heads_ % kv_heads_ != 0)
      detail::fail(fn, "heads (", heads_, ") must be a multiple of kv_heads (", kv_heads_, ")");
    if (w_.Wk.cols() * heads_ != w_.Wq.cols() * kv_heads_)
      detail::fail(fn, "Wq is ", s(w_.Wq), " and Wk is ", s(w_.Wk), ": Wk needs kv_heads x d_k = ", kv_heads_, " x ",
                   w_.Wq.cols() / heads_, " columns");
    if (w_.Wv.rows() != w_.Wk.rows())
      detail::fail(fn, "Wk is ", s(w_.Wk), " and Wv is ", s(w_.Wv), ": they read the same source, so need the same rows");
    if (w_.Wv.cols() == 0 || w_.Wv.cols() % kv_heads_ != 0)
      detail::fail(fn, "Wv is ", s(w_.Wv), ": its ", w_.Wv.cols(), " columns must split into ", kv_heads_,
                   " heads of d_v >= 1");
    const auto check_bias = [&](const char* name, const RowVector<T>& b, const Matrix<T>& W, const char* wname) {
      if (b.size() != 0 && b.size() != W.cols())
        detail::fail(fn, name, " is 1x", b.size(), " but ", wname, " is ", s(W), ": it needs ", W.cols(), " entries");
    };
    check_bias("bq", w_.bq, w_.Wq, "Wq");
    check_bias("bk", w_.bk, w_.Wk, "Wk");
    check_bias("bv", w_.bv, w_.Wv, "Wv");
    if (w_.Wo.size() != 0) {
      if (w_.Wo.rows() != heads_ * value_head_dim())
        detail::fail(fn, "Wo is ", s(w_.Wo), " and Wv is ", s(w_.Wv), ": Wo needs one row per concatenated value feature (",
                     heads_ * value_head_dim(), ")");
      check_bias("bo", w_.bo, w_.Wo, "Wo");
    } else if (w_.bo.size() != 0) {
      detail::fail(fn, "bo is 1x", w_.bo.size(), " but there is no Wo: an output bias needs an output projection");
    }
  }

  AttentionWeights<T> w_;
  Index heads_, kv_heads_;
};

SDPA_END_NAMESPACE
