// sdpa/projection.hpp - Q = X Wq + bq: every token's query (or key, or value) at once.
/// \file
/// Linear projections X W + b: project() and project_into().
#pragma once

#include "attention.hpp"
#include "detail/validate.hpp"

#include <Eigen/Core>

SDPA_BEGIN_NAMESPACE

/// A dynamic-size Eigen row vector: the biases of project(), project_into() and AttentionWeights.
template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

namespace detail {
template <class T>
void project(const Input<T>& X, const Input<T>& W, const RowVector<T>& b, MatrixView<T> out, const char* function) {
  if (X.cols() != W.rows())
    fail(function, "X is ", shape(X.rows(), X.cols()), " and W is ", shape(W.rows(), W.cols()),
         ": X's columns must equal W's rows (d_in)");
  if (b.size() != 0 && b.size() != W.cols())
    fail(function, "b is 1x", b.size(), " and W is ", shape(W.rows(), W.cols()),
         ": the bias needs one entry per output column");
  if (out.rows != X.rows() || out.cols != W.cols())
    fail(function, "out is ", shape(out.rows, out.cols), " but X W is ", shape(X.rows(), W.cols()));
  if (overlaps(MatrixView<const T>(out), X.source()) || overlaps(MatrixView<const T>(out), W.source()) ||
      overlaps(MatrixView<const T>(out), MatrixView<const T>(b.data(), b.size() ? 1 : 0, b.size(), b.size())))
    fail(function, "out (", shape(out.rows, out.cols), ") overlaps X, W or b: the product would overwrite its inputs");
  auto Y = Eigen::Map<Matrix<T>, Eigen::Unaligned, Eigen::OuterStride<>>(out.data, out.rows, out.cols,
                                                                        Eigen::OuterStride<>(out.row_stride));
  if constexpr (is_half_precision<T>) {  // 16-bit storage: the products and sums in float, rounded once
    Matrix<float> y = X.map().template cast<float>() * W.map().template cast<float>();
    if (b.size() != 0) y.rowwise() += b.template cast<float>();
    Y = y.template cast<T>();
  } else {
    Y.noalias() = X.map() * W.map();
    if (b.size() != 0) Y.rowwise() += b;
  }
}
}  // namespace detail

/// Writes X W (+ b, added to every row) into `out`. X: N x d_in, W: d_in x d_out (q_i = x_i W,
/// as in the literature), b: empty or 1 x d_out, out: N x d_out (row-major Matrix, Map or
/// block of one, not overlapping X, W or b).
template <class DX, class DW, class DO, class = detail::if_writable<DO>>
void project_into(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DW>& W,
                  const RowVector<typename DX::Scalar>& b, DO&& out) {
  using T = typename DX::Scalar;
  const detail::Input<T> x(X), w(W);
  detail::project<T>(x, w, b, detail::output_view<T>("project_into", "out", out), "project_into");
}

/// X W + b as a new matrix (b may be empty: no bias).
template <class DX, class DW>
Matrix<typename DX::Scalar> project(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DW>& W,
                                    const RowVector<typename DX::Scalar>& b = {}) {
  using T = typename DX::Scalar;
  const detail::Input<T> x(X), w(W);
  Matrix<T> out(x.rows(), w.cols());
  detail::project<T>(x, w, b, MatrixView<T>(out), "project");
  return out;
}

SDPA_END_NAMESPACE
