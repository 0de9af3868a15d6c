// sdpa/backward.hpp - attention_backward(), attention_backward_into(): the gradients of attention.
/// \file
/// The backward pass of one head: attention_backward(), attention_backward_into(),
/// AttentionGradients and ExtraGradients.
#pragma once

#include "attention.hpp"
#include "batched.hpp"
#include "kernels/reference_backward.hpp"

#include <type_traits>
#include <utility>

SDPA_BEGIN_NAMESPACE

/// The gradients attention_backward() returns.
template <class T>
struct AttentionGradients {
  Matrix<T> dQ;      ///< Nq x d_k
  Matrix<T> dK;      ///< Nk x d_k
  Matrix<T> dV;      ///< Nk x d_v
  Matrix<T> dbias;   ///< options.bias's shape when it has one (a 1 x Nk bias: summed over the queries); else empty
  Vector<T> dsinks;  ///< the sink logit's gradient when options.sinks is set (one entry); else empty
};

/// The optional gradients of attention_backward_into(): each is written only when given.
template <class T>
struct ExtraGradients {
  MatrixView<T> dbias;  ///< options.bias's shape (Nq x Nk, or 1 x Nk: summed over the queries)
  T* dsinks = nullptr;  ///< options.sinks.size() entries (1 for a 2-D call)
};

namespace detail {

/// The backward pass's element types: the compute types (no 16-bit or int8 storage yet).
template <class T>
inline constexpr bool has_backward = std::is_same_v<T, float> || std::is_same_v<T, double> ||
                                     std::is_same_v<T, long double>;

/// Runs the chosen path's backward pass on one head's validated inputs.
template <class T>
void backward_head(const kernels::BackwardInputs<T>& in, const kernels::GradientViews<T>& grads, const Options& options) {
  switch (resolve_kernel<T>(options.kernel, in.q.rows, in.k.rows)) {
    case Kernel::Reference: {
      const ScratchLease<T, Slot::BackwardRows> row_dots(in.q.rows);
      return kernels::reference_backward(in, grads, options, row_dots.data());
    }
    case Kernel::Simd:
      if constexpr (std::is_same_v<T, float>)
        return kernels::with_target(sdpa::isa(), [&](auto target) {
          decltype(target)::backward_head(in, grads, options, true);
        });
      [[fallthrough]];
    default: return kernels::scalar::Target::backward_head(in, grads, options, false);
  }
}

/// Every check of a backward call, then the chosen path. Nothing is written before the checks
/// have passed.
template <class T>
void run_backward(const char* fn, const Input<T>& q, const Input<T>& k, const Input<T>& v, const Input<T>& o,
                  MatrixView<const T> lse, const Input<T>& d_out, const kernels::GradientViews<T>& grads,
                  const Options& options) {
  static_assert(detail::has_backward<T>, "sdpa::attention_backward: Q, K, V, O and dO must all be float, double or long double");
  sdpa::isa();  // the CPU check (isa.hpp), before code built for a wider ISA runs
  const Index nq = q.rows(), nk = k.rows(), dk = q.cols(), nv = v.rows(), dv = v.cols();
  validate_attention<T>(fn, nq, dk, nk, k.cols(), &nv, &dv, options);
  reject_batched_options(fn, options);
  const auto expect = [&](const char* name, Index rows, Index cols, Index want_rows, Index want_cols, const char* what) {
    if (rows != want_rows || cols != want_cols)
      fail(fn, name, " is ", shape(rows, cols), " but it must be ", shape(want_rows, want_cols), " (", what, "; Q is ",
           shape(nq, dk), ", V is ", shape(nk, dv), ")");
  };
  expect("O", o.rows(), o.cols(), nq, dv, "the forward's output, Nq x d_v");
  expect("dO", d_out.rows(), d_out.cols(), nq, dv, "the output's gradient, Nq x d_v");
  expect("lse", lse.rows, 1, nq, 1, "one per query row");
  expect("dQ", grads.dq.rows, grads.dq.cols, nq, dk, "Nq x d_k");
  expect("dK", grads.dk.rows, grads.dk.cols, nk, dk, "Nk x d_k");
  expect("dV", grads.dv.rows, grads.dv.cols, nk, dv, "Nk x d_v");
  if (!grads.dbias.empty()) {
    const MatrixView<T>& b = grads.dbias;
    if (options.bias.empty()) fail(fn, "dbias is requested but options.bias is empty: there is no bias to differentiate");
    expect("dbias", b.rows, b.cols, options.bias.rows(), options.bias.cols(), "options.bias's shape");
    if ((b.cols > 1 && b.col_stride != 1) || (b.rows > 1 && b.row_stride < b.cols))
      fail(fn, "dbias (", shape(b.rows, b.cols), ") has strides (", b.row_stride, ", ", b.col_stride,
           "): results are written into contiguous rows that do not overlap (row-major, row stride >= ", b.cols, ")");
  }
  if (grads.dsink && options.sinks.empty())
    fail(fn, "dsinks is requested but options.sinks is empty: there is no sink logit to differentiate");

  // No result may touch an input (still being read) or another result.
  const std::pair<const char*, MatrixView<T>> results[] = {
      {"dQ", grads.dq}, {"dK", grads.dk}, {"dV", grads.dv}, {"dbias", grads.dbias},
      {"dsinks", MatrixView<T>(grads.dsink, grads.dsink ? 1 : 0, 1, 1)}};
  for (std::size_t a = 0; a < std::size(results); ++a) {
    const auto& [name, view] = results[a];
    const auto check = [&, name = name, view = view](const char* input, const auto& other) {
      if (overlaps(MatrixView<const T>(view), other))
        fail(fn, name, " (", shape(view.rows, view.cols), ") overlaps ", input, " (", shape(other.rows, other.cols),
             "): results would overwrite inputs still being read, or each other");
    };
    check("Q", q.source()), check("K", k.source()), check("V", v.source()), check("O", o.source());
    check("dO", d_out.source()), check("lse", lse);
    if (!options.mask.empty()) check("options.mask", options.mask);
    if (!options.bias.f32.empty()) check("options.bias", options.bias.f32);
    if (!options.bias.f64.empty()) check("options.bias", options.bias.f64);
    if (!options.sinks.empty())
      check("options.sinks", MatrixView<const double>(options.sinks.data(), 1, Index(options.sinks.size()),
                                                      Index(options.sinks.size())));
    for (std::size_t b = a + 1; b < std::size(results); ++b) check(results[b].first, results[b].second);
  }

  backward_head<T>(
      {q.view(), k.view(), v.view(), o.view(), d_out.view(), lse.data, resolve_scale<T>(fn, options, dk), HeadMasks::of(options)},
      grads, options);
}
}  // namespace detail

/// The gradients of O = attention(Q, K, V, options) with respect to Q, K and V, written into
/// dQ (Nq x d_k), dK (Nk x d_k) and dV (Nk x d_v), given the forward's output O, its LSEs
/// (attention_into with an lse) and the output's gradient dO. `extra` asks for the bias's and
/// the sink's gradients too. The caller owns every result, so a training loop allocates
/// nothing per step. Every path (options.kernel) computes it; none stores the Nq x Nk weights,
/// and none depends on the thread count (bit-identical for any `threads`).
///
///     sdpa::Vector<float> lse(Q.rows());
///     sdpa::attention_into(Q, K, V, O, lse, options);
///     sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, options);
template <class DQ, class DK, class DV, class DO, class DG, class GQ, class GK, class GV,
          class = detail::if_writable<GQ>, class = detail::if_writable<GK>, class = detail::if_writable<GV>>
void attention_backward_into(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K,
                             const Eigen::MatrixBase<DV>& V, const Eigen::MatrixBase<DO>& O,
                             const Eigen::Ref<const Vector<typename DQ::Scalar>>& lse, const Eigen::MatrixBase<DG>& dO,
                             GQ&& dQ, GK&& dK, GV&& dV, const Options& options = {},
                             const ExtraGradients<typename DQ::Scalar>& extra = {}) {
  using T = typename DQ::Scalar;
  const char* fn = "attention_backward_into";
  const detail::Input<T> q(Q), k(K), v(V), o(O), d_out(dO);
  const kernels::GradientViews<T> grads{detail::output_view<T>(fn, "dQ", dQ), detail::output_view<T>(fn, "dK", dK),
                                        detail::output_view<T>(fn, "dV", dV), extra.dbias, extra.dsinks};
  detail::run_backward<T>(fn, q, k, v, o, MatrixView<const T>(lse.data(), lse.size(), 1, 1), d_out, grads, options);
}

/// The gradients of O = attention(Q, K, V, options), as attention_backward_into() computes
/// them, in new matrices; also the bias's (when options.bias is set) and the sink's (when
/// options.sinks is).
///
///     sdpa::AttentionGradients<float> g = sdpa::attention_backward(Q, K, V, O, lse, dO, options);
template <class DQ, class DK, class DV, class DO, class DG>
AttentionGradients<typename DQ::Scalar> attention_backward(const Eigen::MatrixBase<DQ>& Q,
                                                           const Eigen::MatrixBase<DK>& K,
                                                           const Eigen::MatrixBase<DV>& V,
                                                           const Eigen::MatrixBase<DO>& O,
                                                           const Eigen::Ref<const Vector<typename DQ::Scalar>>& lse,
                                                           const Eigen::MatrixBase<DG>& dO, const Options& options = {}) {
  using T = typename DQ::Scalar;
  AttentionGradients<T> g;
  g.dQ.resize(Q.rows(), Q.cols());
  g.dK.resize(K.rows(), K.cols());
  g.dV.resize(V.rows(), V.cols());
  ExtraGradients<T> extra;
  if (!options.bias.empty()) {
    g.dbias.resize(options.bias.rows(), options.bias.cols());
    extra.dbias = MatrixView<T>(g.dbias.data(), g.dbias.rows(), g.dbias.cols(), g.dbias.cols());
  }
  if (!options.sinks.empty()) {
    g.dsinks.resize(Index(options.sinks.size()));
    extra.dsinks = g.dsinks.data();
  }
  const detail::Input<T> q(Q), k(K), v(V), o(O), d_out(dO);
  const auto view = [](Matrix<T>& m) { return MatrixView<T>(m.data(), m.rows(), m.cols(), m.cols()); };
  detail::run_backward<T>("attention_backward", q, k, v, o, MatrixView<const T>(lse.data(), lse.size(), 1, 1), d_out,
                          {view(g.dQ), view(g.dK), view(g.dV), extra.dbias, extra.dsinks}, options);
  return g;
}

/// The gradients of the batched attention(q, k, v, out, lse, options) with respect to Q, K
/// and V, for every sequence and head, in any layout (TensorView::bhnd, bnhd, FusedQKV: a
/// fused dQKV buffer is written in place). With grouped-query heads, dK and dV of a key/value
/// head are the sums over its query heads, added in head order. `lse`: [B, H_q, N_q, 1] with
/// each head's LSEs contiguous (token_stride 1), as the batched forward wrote them. `dsinks`,
/// when not null, receives one gradient per query head (summed over the batch). Heads run one
/// after another, each on every thread; results do not depend on the thread count.
template <class T>
void attention_backward(const TensorView<const T>& q, const TensorView<const T>& k, const TensorView<const T>& v,
                        const TensorView<const T>& o, const TensorView<const T>& lse,
                        const TensorView<const T>& d_out, const TensorView<T>& dq, const TensorView<T>& dk,
                        const TensorView<T>& dv, const Options& options = {}, T* dsinks = nullptr) {
  static_assert(detail::has_backward<T>, "sdpa::attention_backward: Q, K, V, O and dO must all be float, double or long double");
  const char* fn = "attention_backward";
  sdpa::isa();
  const TensorView<T> o_as_out{const_cast<T*>(o.data), o.batch, o.heads, o.tokens, o.features, o.batch_stride,
                               o.head_stride, o.token_stride};
  detail::validate_batched(q, k, v, o_as_out, options, fn);
  const auto same_sizes = [&](const char* name, const auto& t, const auto& like, const char* like_name) {
    if (t.batch != like.batch || t.heads != like.heads || t.tokens != like.tokens || t.features != like.features)
      detail::fail(fn, detail::shape4(name, t), " must have the sizes of ", detail::shape4(like_name, like));
  };
  same_sizes("dO", d_out, o, "O");
  same_sizes("dQ", dq, q, "Q");
  same_sizes("dK", dk, k, "K");
  same_sizes("dV", dv, v, "V");
  detail::check_lse_view(fn, lse, q);
  if (dsinks && options.sinks.empty())
    detail::fail(fn, "dsinks is requested but options.sinks is empty: there is no sink logit to differentiate");
  if (dsinks && detail::overlaps(MatrixView<const T>(dsinks, 1, q.heads, q.heads),
                                 MatrixView<const double>(options.sinks.data(), 1, Index(options.sinks.size()),
                                                          Index(options.sinks.size()))))
    detail::fail(fn, "dsinks overlaps options.sinks: results would overwrite inputs still being read");
  std::pair<std::uintptr_t, std::uintptr_t> range;
  for (const auto& [name, view] : {std::pair<const char*, TensorView<const T>>{"dO", d_out}, {"lse", lse}})
    if (view.batch_stride < 0 || view.head_stride < 0 || view.token_stride < 0 || !detail::span(view, range))
      detail::fail(fn, name, "'s strides must not be negative or too large to address");
  for (const auto& [name, grad] : {std::pair<const char*, TensorView<T>>{"dQ", dq}, {"dK", dk}, {"dV", dv}}) {
    if (grad.batch_stride < 0 || grad.head_stride < 0 || grad.token_stride < 0 || !detail::span(grad, range))
      detail::fail(fn, name, "'s strides must not be negative or too large to address");
    if (!detail::owns_its_elements(grad))
      detail::fail(fn, detail::shape4(name, grad), "'s strides give two elements one place: results would overwrite each other");
  }
  // No result may touch an input or another result (a fused dQKV buffer interleaves its three
  // parts without overlap: compared head by head, exactly). dsinks: one value per query head.
  const TensorView<T> dsinks_view{dsinks, dsinks ? 1 : 0, 1, q.heads, 1, 0, 0, 1};
  const std::pair<const char*, TensorView<const T>> inputs[] = {{"Q", q}, {"K", k}, {"V", v}, {"O", o}, {"dO", d_out},
                                                                {"lse", lse}};
  const std::pair<const char*, TensorView<T>> results[] = {{"dQ", dq}, {"dK", dk}, {"dV", dv}, {"dsinks", dsinks_view}};
  for (std::size_t a = 0; a < std::size(results); ++a) {
    const auto& [name, result] = results[a];
    for (const auto& [input_name, input] : inputs)
      if (detail::heads_overlap(result, input))
        detail::fail(fn, name, " overlaps ", input_name, ": results would overwrite inputs still being read");
    for (std::size_t b = a; b < std::size(results); ++b)
      if (detail::heads_overlap(result, TensorView<const T>(results[b].second), a == b))
        detail::fail(fn, name, " overlaps ", results[b].first, ": results would overwrite each other");
    if (detail::overlaps_masks(result, options))
      detail::fail(fn, name, " overlaps a mask or bias of the options: results would overwrite inputs still being read");
  }

  const double scale = detail::resolve_scale<T>(fn, options, q.features);
  const Index group = q.heads / std::max<Index>(1, k.heads);
  const Index nk = k.tokens, dkf = k.features, dvf = v.features;
  // A group's second and later query heads write their dK and dV here, then add them in.
  const detail::ScratchLease<T, detail::Slot::BackwardGroup> extra(group > 1 ? nk * (dkf + dvf) : 0);
  if (dsinks) std::fill(dsinks, dsinks + q.heads, T(0));
  for (Index b = 0; b < q.batch; ++b)
    for (Index h = 0; h < q.heads; ++h) {
      const Index g = h / group;
      const bool first = h % group == 0;
      kernels::GradientViews<T> head{dq.head(b, h), dk.head(b, g), dv.head(b, g), {}, nullptr};
      if (!first) {
        head.dk = MatrixView<T>(extra.data(), nk, dkf, dkf);
        head.dv = MatrixView<T>(extra.data() + nk * dkf, nk, dvf, dvf);
      }
      T dsink = T(0);
      if (dsinks) head.dsink = &dsink;
      const MatrixView<const T> head_lse = lse.head(b, h);
      detail::backward_head<T>({q.head(b, h), k.head(b, g), v.head(b, g), o.head(b, h), d_out.head(b, h),
                                head_lse.data, scale, detail::head_masks(options, b, h)},
                               head, options);
      if (dsinks) dsinks[h] += dsink;
      if (first) continue;
      for (Index j = 0; j < nk; ++j) {
        T* to_k = dk.head(b, g).row(j);
        T* to_v = dv.head(b, g).row(j);
        for (Index e = 0; e < dkf; ++e) to_k[e] += head.dk(j, e);
        for (Index e = 0; e < dvf; ++e) to_v[e] += head.dv(j, e);
      }
    }
}

SDPA_END_NAMESPACE
