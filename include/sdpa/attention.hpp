// sdpa/attention.hpp - attention(), attention_into(), attention_weights(): validate, then dispatch.
/// \file
/// Attention on one head: attention(), attention_into(), attention_weights(), merge_attention(),
/// attention_weights_from_lse(), and the Eigen aliases Matrix and Vector.
#pragma once

#include "detail/bind.hpp"
#include "detail/validate.hpp"
#include "isa.hpp"
#include "kernels/reference.hpp"
#include "kernels/targets.hpp"
#include "options.hpp"
#include "storage.hpp"

#include <Eigen/Core>

#include <cmath>
#include <limits>
#include <type_traits>

SDPA_BEGIN_NAMESPACE

/// A dynamic-size row-major Eigen matrix: what sdpa's functions return.
template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

namespace detail {

/// The path that runs (README, "Kernels"). Auto's choices were measured with
/// benchmarks/bench_auto (1 thread, AVX-512): float runs Simd, except for tiny problems with
/// more than kDecodeRows queries (Nq Nk <= 128: at N = 8, d = 64 the reference's lack of setup
/// gives 20.9 GFLOP/s against 16.5; up to kDecodeRows queries Simd's decode microkernels win);
/// other types run the reference while its Nq x Nk scores take at most 16 MiB (17.9 against
/// Blocked's 11.3 at N = 1024, d = 64, double) and Blocked beyond, so that memory stays
/// O((Nq + Nk) d). Simd has float microkernels only (16-bit storage computes in float and runs
/// them too) and runs Blocked otherwise. T: the element type of Q.
template <class T>
Kernel resolve_kernel(Kernel requested, Index nq, Index nk) {
  constexpr bool has_microkernels = std::is_same_v<compute_type<T>, float>;
  if (requested == Kernel::Simd) return has_microkernels ? Kernel::Simd : Kernel::Blocked;
  if (requested != Kernel::Auto) return requested;
  if (has_microkernels) return nq > kernels::kDecodeRows && nq * nk <= 128 ? Kernel::Reference : Kernel::Simd;
  constexpr Index kReferenceScoreBytes = Index(16) << 20;
  return nq * nk * Index(sizeof(T)) <= kReferenceScoreBytes ? Kernel::Reference : Kernel::Blocked;
}

/// Runs the chosen kernel on validated inputs, with the masks of this head: the tiled paths
/// in the target of the ISA that runs (sdpa::isa()); Blocked always in the scalar target,
/// which is compiled with the build's own flags. Q and out hold T, K and V hold S.
template <class T, class S>
void dispatch(MatrixView<const T> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<T> out,
              compute_type<T>* lse, double scale, const HeadMasks& masks, const Options& options) {
  const auto simd = [&](auto... target_tag) {  // generic: instantiated only where float microkernels exist
    kernels::with_target(sdpa::isa(), [&](auto target) {
      decltype(target)::simd_head(q, k, v, out, lse, scale, masks, options, target_tag...);
    });
  };
  if constexpr (is_quantized<S>) {  // only the vector microkernels dequantise int8 blocks (check_kernel_for)
    simd();
  } else {
    switch (resolve_kernel<T>(options.kernel, q.rows, k.rows)) {
      case Kernel::Reference: return kernels::reference_attention(q, k, v, out, scale, masks, options, lse);
      case Kernel::Simd:
        if constexpr (std::is_same_v<compute_type<T>, float>) return simd();
        [[fallthrough]];
      default: return kernels::scalar::Target::blocked_head(q, k, v, out, lse, scale, masks, options);
    }
  }
}

/// An int8 cache runs on the Simd path only, whose microkernels dequantise in registers: a
/// call that names another path gets an error rather than a different path.
template <class S>
void check_kernel_for(const char* function, const Options& options) {
  if (is_quantized<S> && (options.kernel == Kernel::Reference || options.kernel == Kernel::Blocked))
    fail(function, "options.kernel is ", options.kernel == Kernel::Reference ? "Reference" : "Blocked",
         ", but an int8 (BlockQ8_0) cache runs on the Simd path only (Kernel::Simd or Kernel::Auto)");
}

/// Which query head of how many a 2-D call computes: the entry it takes of the per-head
/// lists of Options (alibi_slopes, sinks). A user's 2-D call is head 0 of 1.
struct HeadOf {
  Index index = 0;
  Index count = 1;
};

/// Validates everything, then runs the chosen kernel. Nothing is written before validation
/// has passed. All 2-D entry points (and SelfAttention, head by head) come through here.
/// `sources`, when given, are the caller's Q, K, V (which the views may be copies of).
template <class T, class S = T>
void run_attention(const char* function, MatrixView<const T> q, MatrixView<const S> k, MatrixView<const S> v,
                   MatrixView<T> out, const Options& options, compute_type<T>* lse = nullptr,
                   const Input<T>* q_source = nullptr, const Input<S>* k_source = nullptr,
                   const Input<S>* v_source = nullptr, HeadOf head = {}) {
  check_storage<T, S>();
  using C = compute_type<T>;
  sdpa::isa();  // first of all, the CPU check (isa.hpp): before code built for the wider ISA runs
  const Index dk = features<S>(k.cols), dv = features<S>(v.cols);  // int8 views count blocks
  validate_attention<C>(function, q.rows, q.cols, k.rows, dk, &v.rows, &dv, options, head.count);
  reject_batched_options(function, options);
  check_kernel_for<S>(function, options);
  validate_output(function, out, q.rows, dv, options, lse, std::pair{"Q", q}, std::pair{"K", k}, std::pair{"V", v});
  if (q_source)
    validate_output(function, out, q.rows, dv, options, lse, std::pair{"Q", q_source->source()},
                    std::pair{"K", k_source->source()}, std::pair{"V", v_source->source()});
  dispatch(q, k, v, out, lse, resolve_scale<C>(function, options, q.cols), HeadMasks::of(options, head.index),
           options);
}

/// T, in a context where a template argument is never deduced from it (std::type_identity_t).
template <class T>
using Exactly = typename std::enable_if<true, T>::type;

/// The element type of K and V, which must be the same.
template <class DK, class DV>
struct KeyValue {
  static_assert(std::is_same_v<typename DK::Scalar, typename DV::Scalar>, "sdpa: K and V need the same element type");
  using type = typename DK::Scalar;
};
template <class DK, class DV>
using KeyValueType = typename KeyValue<DK, DV>::type;

/// Enables a template for arguments that results can be written into (see bind.hpp).
template <class D>
using if_writable = std::enable_if_t<is_writable_matrix<D>()>;

}  // namespace detail

/// Writes softmax(scale Q K^T + mask) V into `out` (Nq x d_v, row-major; a Matrix, Map or
/// block of one, whose elements each have a place of their own), reusing the caller's memory:
/// fresh memory is costly to touch, so a loop of calls should own its output.
///
///     sdpa::Matrix<float> out(Q.rows(), V.cols());
///     for (...) sdpa::attention_into(Q, K, V, out);
template <class DQ, class DK, class DV, class DO, class = detail::if_writable<DO>>
void attention_into(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K, const Eigen::MatrixBase<DV>& V,
                    DO&& out, const Options& options = {}) {
  using T = typename DQ::Scalar;
  using S = detail::KeyValueType<DK, DV>;
  const detail::Input<T> q(Q);
  const detail::Input<S> k(K), v(V);
  detail::run_attention<T, S>("attention_into", q.view(), k.view(), v.view(),
                              detail::output_view<T>("attention_into", "out", out), options, nullptr, &q, &k, &v);
}

/// A dynamic-size Eigen column vector: the per-row log-sum-exps (`lse`) of attention_into(),
/// merge_attention() and attention_weights_from_lse().
template <class T>
using Vector = Eigen::Matrix<T, Eigen::Dynamic, 1>;

/// attention_into that also writes each query row's log-sum-exp, lse_i = log sum_j
/// exp(scale q_i . k_j + bias_ij) over the keys row i may see (-inf for a fully masked row):
/// the statistic that merges partial results (merge_attention) and reproduces any row's
/// weights without the others (attention_weights_from_lse). The LSEs are in the compute type
/// (float for 16-bit Q): rounded to 16 bits they could not merge partials accurately.
template <class DQ, class DK, class DV, class DO, class = detail::if_writable<DO>>
void attention_into(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K, const Eigen::MatrixBase<DV>& V,
                    DO&& out, Eigen::Ref<Vector<compute_type<typename DQ::Scalar>>> lse, const Options& options = {}) {
  using T = typename DQ::Scalar;
  using S = detail::KeyValueType<DK, DV>;
  const detail::Input<T> q(Q);
  const detail::Input<S> k(K), v(V);
  if (lse.size() != q.rows())
    detail::fail("attention_into", "lse has ", lse.size(), " entries but Q is ", detail::shape(q.rows(), q.cols()),
                 ": it needs one per query row");
  detail::run_attention<T, S>("attention_into", q.view(), k.view(), v.view(),
                              detail::output_view<T>("attention_into", "out", out), options, lse.data(), &q, &k, &v);
}

/// Combines two attention results over disjoint key sets of the same queries into the result
/// over their union, exactly (up to rounding), in place in (out, lse):
///     o = (e^(lse - m) o + e^(lse_b - m) o_b) / (e^(lse - m) + e^(lse_b - m)),  m = max(lse, lse_b)
/// This is how a long context sharded across threads, processes or machines is put back
/// together: each shard runs attention_into with an LSE, then the partials are merged.
///
///     sdpa::merge_attention(out, lse, out_b, lse_b);  // the scalar type follows `out`
template <class Scalar = void, class DO, class DB,
          class T = std::conditional_t<std::is_void_v<Scalar>, typename std::decay_t<DO>::Scalar, Scalar>,
          class = detail::if_writable<DO>>
void merge_attention(DO&& out, Eigen::Ref<Vector<detail::Exactly<compute_type<T>>>> lse,
                     const Eigen::MatrixBase<DB>& out_b,
                     const Eigen::Ref<const Vector<detail::Exactly<compute_type<T>>>>& lse_b) {
  using C = compute_type<T>;
  const char* fn = "merge_attention";
  const MatrixView<T> o = detail::output_view<T>(fn, "out", out);
  const detail::Input<T> b(out_b);
  if (b.rows() != o.rows || b.cols() != o.cols || lse.size() != o.rows || lse_b.size() != o.rows)
    detail::fail(fn, "out is ", detail::shape(o.rows, o.cols), " with ", lse.size(), " LSEs and out_b is ",
                 detail::shape(b.rows(), b.cols()), " with ", lse_b.size(),
                 ": both parts need the same shape and one LSE per row");
  const MatrixView<const C> lse_view(lse.data(), lse.size(), 1, 1), lse_b_view(lse_b.data(), lse_b.size(), 1, 1);
  if (detail::overlaps(MatrixView<const T>(o), b.source()) || detail::overlaps(MatrixView<const T>(o), lse_view) ||
      detail::overlaps(MatrixView<const T>(o), lse_b_view) ||
      detail::overlaps(lse_view, b.source()) || detail::overlaps(lse_view, lse_b_view))
    detail::fail(fn, "out and lse must not overlap each other, out_b or lse_b");
  kernels::merge_partial(o, lse.data(), b.view(), lse_b.data());
}

/// Rows [first_row, first_row + lse.size()) of the attention weights, from the LSEs that
/// attention_into returned: P_ij = exp(scale q_i . k_j + bias_ij - lse_i), 0 where masked.
/// One pass over the keys and no Nq x Nk matrix: the weights of any query, on demand.
/// Q and K are the whole inputs of the original call (causal alignment needs every row).
/// (For 16-bit Q and K the weights are computed, and returned, in float.)
template <class DQ, class DK>
Matrix<compute_type<typename DQ::Scalar>> attention_weights_from_lse(
    const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K,
    const Eigen::Ref<const Vector<compute_type<typename DQ::Scalar>>>& lse, Index first_row,
    const Options& options = {}) {
  using T = compute_type<typename DQ::Scalar>;
  detail::check_storage<typename DQ::Scalar, typename DK::Scalar>();
  const detail::Input<typename DQ::Scalar> q(Q);
  const detail::Input<typename DK::Scalar> k(K);
  const char* fn = "attention_weights_from_lse";
  detail::validate_attention<T>(fn, q.rows(), q.cols(), k.rows(), k.cols(), nullptr, nullptr, options);
  detail::reject_batched_options(fn, options);
  if (first_row < 0 || first_row > q.rows() || lse.size() > q.rows() - first_row)  // no overflow for any first_row
    detail::fail(fn, "rows [", first_row, ", ", first_row, " + ", lse.size(), ") are not all rows of Q (",
                 detail::shape(q.rows(), q.cols()), ")");
  const double scale = detail::resolve_scale<T>(fn, options, q.cols());
  const detail::MaskPolicy<T> mask(options, q.rows(), k.rows(), T(1));
  Matrix<T> weights(lse.size(), k.rows());
  for (Index r = 0; r < lse.size(); ++r) {
    const Index i = first_row + r;
    T* p = weights.row(r).data();
    kernels::reference_scores(q.view().row(i), k.view(), i, scale, mask, p);
    for (Index j = 0; j < k.rows(); ++j) p[j] = std::exp(p[j] - lse(r));  // exp(-inf - x) = 0
    if (lse(r) == -std::numeric_limits<T>::infinity()) weights.row(r).setZero();
  }
  return weights;
}

/// O = softmax(scale Q K^T + mask) V. Q: Nq x d_k, K: Nk x d_k, V: Nk x d_v; returns Nq x d_v.
/// Accepts any Eigen dense expression; row-major inputs are used without copying.
///
///     sdpa::Options options;
///     options.causal = true;
///     sdpa::Matrix<float> O = sdpa::attention(Q, K, V, options);
/// Storage types (README, "Storage types"): float, double, long double, Eigen::half or
/// Eigen::bfloat16, all alike; or K and V in a 16-bit type under float or 16-bit Q. The result
/// has Q's type; 16-bit storage is computed in float and rounded once, at the end.
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> attention(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K,
                                      const Eigen::MatrixBase<DV>& V, const Options& options = {}) {
  using T = typename DQ::Scalar;
  using S = detail::KeyValueType<DK, DV>;
  const detail::Input<T> q(Q);
  const detail::Input<S> k(K), v(V);
  Matrix<T> out(q.rows(), v.cols());
  detail::run_attention<T, S>("attention", q.view(), k.view(), v.view(),
                              MatrixView<T>(out.data(), out.rows(), out.cols(), out.cols()), options);
  return out;
}

/// P = softmax(scale Q K^T + mask): the Nq x Nk attention weights, each row summing to 1
/// (0 for a row that may see no key). Always computed by the reference path.
/// (For 16-bit Q and K the weights are computed, and returned, in float.)
template <class DQ, class DK>
Matrix<compute_type<typename DQ::Scalar>> attention_weights(const Eigen::MatrixBase<DQ>& Q,
                                                            const Eigen::MatrixBase<DK>& K,
                                                            const Options& options = {}) {
  using T = compute_type<typename DQ::Scalar>;
  detail::check_storage<typename DQ::Scalar, typename DK::Scalar>();
  const detail::Input<typename DQ::Scalar> q(Q);
  const detail::Input<typename DK::Scalar> k(K);
  detail::validate_attention<T>("attention_weights", q.rows(), q.cols(), k.rows(), k.cols(), nullptr, nullptr, options);
  detail::reject_batched_options("attention_weights", options);
  const double scale = detail::resolve_scale<T>("attention_weights", options, q.cols());
  Matrix<T> weights(q.rows(), k.rows());
  kernels::reference_weights(q.view(), k.view(), scale, detail::HeadMasks::of(options), options,
                             MatrixView<T>(weights.data(), weights.rows(), weights.cols(), weights.cols()));
  return weights;
}

SDPA_END_NAMESPACE
