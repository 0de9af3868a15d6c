// sdpa/kernels/reference.hpp - Kernel::Reference: the formula, one pass at a time.
//
//   Q (Nq, d_k), K (Nk, d_k), V (Nk, d_v)  ->  S, P (Nq, Nk)  ->  O (Nq, d_v)
//
// It materialises the whole Nq x Nk score matrix, which is what makes it simple enough to be
// the oracle the tiled paths are tested against, and the place to read how attention works.
#pragma once

#include "../detail/mask_policy.hpp"
#include "../options.hpp"

#include <Eigen/Core>

#include <cmath>
#include <limits>

namespace sdpa::kernels {

namespace detail {
template <class T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// An Eigen Map of a view with unit column stride (no copy).
template <class T>
auto as_eigen(const MatrixView<T>& view) {
  using Plain = std::conditional_t<std::is_const_v<T>, const RowMajor<std::remove_const_t<T>>, RowMajor<T>>;
  return Eigen::Map<Plain, Eigen::Unaligned, Eigen::OuterStride<>>(view.data, view.rows, view.cols,
                                                                   Eigen::OuterStride<>(view.row_stride));
}
}  // namespace detail

/// P = softmax(scale Q K^T + mask), row by row; a row with no visible key is all zeros.
template <class T>
void reference_weights(MatrixView<const T> q, MatrixView<const T> k, double scale, const Options& options,
                       MatrixView<T> weights) {
  const Index nq = q.rows, nk = k.rows;
  auto P = detail::as_eigen(weights);

  // pass 1: every query against every key, S = scale Q K^T
  P.noalias() = T(scale) * (detail::as_eigen(q) * detail::as_eigen(k).transpose());

  const sdpa::detail::MaskPolicy<T> mask(options, nq, nk, T(1));
  for (Index i = 0; i < nq; ++i) {
    T* s = weights.row(i);
    // pass 2: masks: forbidden pairs become -inf, the bias is added
    mask.apply(i, 0, nk, s);
    // pass 3: the row's max, subtracted so that exp cannot overflow (softmax is shift-invariant)
    T row_max = -std::numeric_limits<T>::infinity();
    for (Index j = 0; j < nk; ++j) row_max = std::max(row_max, s[j]);
    if (row_max == -std::numeric_limits<T>::infinity()) {  // nothing visible: weights 0, output 0
      std::fill(s, s + nk, T(0));
      continue;
    }
    // pass 4: exponentiate and sum
    T sum = T(0);
    for (Index j = 0; j < nk; ++j) {
      s[j] = std::exp(s[j] - row_max);
      sum += s[j];
    }
    // pass 5: normalise, so that the row sums to 1
    for (Index j = 0; j < nk; ++j) s[j] /= sum;
  }
}

/// out = P V with P from reference_weights. Allocates the Nq x Nk matrix P.
template <class T>
void reference_attention(MatrixView<const T> q, MatrixView<const T> k, MatrixView<const T> v, MatrixView<T> out,
                         double scale, const Options& options) {
  detail::RowMajor<T> P(q.rows, k.rows);
  reference_weights(q, k, scale, options, MatrixView<T>(P.data(), P.rows(), P.cols(), P.cols()));
  // pass 6: each output row is its weights' blend of the value rows
  detail::as_eigen(out).noalias() = P * detail::as_eigen(v);
}

}  // namespace sdpa::kernels
