// sdpa/attention.hpp - attention(), attention_into(), attention_weights(): validate, then dispatch.
#pragma once

#include "detail/validate.hpp"
#include "kernels/blocked.hpp"
#include "kernels/reference.hpp"
#include "kernels/simd.hpp"
#include "options.hpp"

#include <Eigen/Core>

#include <type_traits>

namespace sdpa {

template <class T>
using Matrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// A read-only row-major view of any Eigen expression: row-major storage with unit inner
/// stride binds without a copy; anything else (column-major, A * B, ...) is evaluated once.
template <class T>
using ConstRef = Eigen::Ref<const Matrix<T>, 0, Eigen::OuterStride<>>;
/// A writable row-major matrix, Map or block of one.
template <class T>
using Ref = Eigen::Ref<Matrix<T>, 0, Eigen::OuterStride<>>;

namespace detail {

template <class T>
MatrixView<const T> view_of(const ConstRef<T>& m) {
  return {m.data(), m.rows(), m.cols(), m.outerStride()};
}
template <class T>
MatrixView<T> view_of(Ref<T>& m) {
  return {m.data(), m.rows(), m.cols(), m.outerStride()};
}

/// The path that runs (README, "Kernels"). Auto's choices were measured (1 thread, AVX-512):
/// float runs Simd, except for tiny problems (Nq Nk <= 128) where the reference's lack of
/// setup wins; other types run the reference while its Nq x Nk scores take at most 16 MiB
/// (1.5-2x faster than Blocked for double at d = 64) and Blocked beyond, so that memory stays
/// O((Nq + Nk) d). Simd has float microkernels only and runs Blocked otherwise.
template <class T>
Kernel resolve_kernel(Kernel requested, Index nq, Index nk) {
  constexpr bool has_microkernels = std::is_same_v<T, float>;
  if (requested == Kernel::Simd) return has_microkernels ? Kernel::Simd : Kernel::Blocked;
  if (requested != Kernel::Auto) return requested;
  if (has_microkernels) return nq * nk <= 128 ? Kernel::Reference : Kernel::Simd;
  constexpr Index kReferenceScoreBytes = Index(16) << 20;
  return nq * nk * Index(sizeof(T)) <= kReferenceScoreBytes ? Kernel::Reference : Kernel::Blocked;
}

/// Validates everything, then runs the chosen kernel. Nothing is written before validation
/// has passed. All public entry points (and SelfAttention, head by head) come through here.
template <class T>
void run_attention(const char* function, MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v,
                   MatrixView<T> out, const Options& options) {
  validate_attention(function, q.rows, q.cols, k.rows, k.cols, &v.rows, &v.cols, options);
  validate_output(function, out, q.rows, v.cols, {{"Q", q}, {"K", k}, {"V", v}});
  const double scale = resolve_scale(function, options, q.cols);
  switch (resolve_kernel<T>(options.kernel, q.rows, k.rows)) {
    case Kernel::Reference: return kernels::reference_attention(q, k, v, out, scale, options);
    case Kernel::Simd:
      if constexpr (std::is_same_v<T, float>) return kernels::simd_attention(q, k, v, out, scale, options);
      [[fallthrough]];
    default: return kernels::blocked_attention(q, k, v, out, scale, options);
  }
}

}  // namespace detail

/// Writes softmax(scale Q K^T + mask) V into `out` (Nq x d_v, row-major; a Matrix, Map or
/// block of one), reusing the caller's memory: fresh memory is costly to touch, so a loop of
/// calls should own its output.
///
///     sdpa::Matrix<float> out(Q.rows(), V.cols());
///     for (...) sdpa::attention_into(Q, K, V, out);
template <class DQ, class DK, class DV>
void attention_into(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K, const Eigen::MatrixBase<DV>& V,
                    Ref<typename DQ::Scalar> out, const Options& options = {}) {
  using T = typename DQ::Scalar;
  static_assert(std::is_same_v<T, typename DK::Scalar> && std::is_same_v<T, typename DV::Scalar>,
                "sdpa::attention: Q, K and V must have the same scalar type");
  const ConstRef<T> q(Q.derived()), k(K.derived()), v(V.derived());
  detail::run_attention<T>("attention_into", detail::view_of(q), detail::view_of(k), detail::view_of(v),
                           detail::view_of(out), options);
}

/// O = softmax(scale Q K^T + mask) V. Q: Nq x d_k, K: Nk x d_k, V: Nk x d_v; returns Nq x d_v.
/// Accepts any Eigen dense expression; row-major inputs are used without copying.
///
///     sdpa::Options options;
///     options.causal = true;
///     sdpa::Matrix<float> O = sdpa::attention(Q, K, V, options);
template <class DQ, class DK, class DV>
Matrix<typename DQ::Scalar> attention(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K,
                                      const Eigen::MatrixBase<DV>& V, const Options& options = {}) {
  using T = typename DQ::Scalar;
  static_assert(std::is_same_v<T, typename DK::Scalar> && std::is_same_v<T, typename DV::Scalar>,
                "sdpa::attention: Q, K and V must have the same scalar type");
  const ConstRef<T> q(Q.derived()), k(K.derived()), v(V.derived());
  Matrix<T> out(q.rows(), v.cols());
  detail::run_attention<T>("attention", detail::view_of(q), detail::view_of(k), detail::view_of(v),
                           MatrixView<T>(out.data(), out.rows(), out.cols(), out.cols()), options);
  return out;
}

/// P = softmax(scale Q K^T + mask): the Nq x Nk attention weights, each row summing to 1
/// (0 for a row that may see no key). Always computed by the reference path.
template <class DQ, class DK>
Matrix<typename DQ::Scalar> attention_weights(const Eigen::MatrixBase<DQ>& Q, const Eigen::MatrixBase<DK>& K,
                                              const Options& options = {}) {
  using T = typename DQ::Scalar;
  static_assert(std::is_same_v<T, typename DK::Scalar>, "sdpa::attention_weights: Q and K must have the same scalar type");
  const ConstRef<T> q(Q.derived()), k(K.derived());
  detail::validate_attention("attention_weights", q.rows(), q.cols(), k.rows(), k.cols(), nullptr, nullptr, options);
  const double scale = detail::resolve_scale("attention_weights", options, q.cols());
  Matrix<T> weights(q.rows(), k.rows());
  kernels::reference_weights(detail::view_of(q), detail::view_of(k), scale, options,
                             MatrixView<T>(weights.data(), weights.rows(), weights.cols(), weights.cols()));
  return weights;
}

}  // namespace sdpa
