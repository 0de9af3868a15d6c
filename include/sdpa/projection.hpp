// sdpa/projection.hpp - Q = X Wq + bq: every token's query (or key, or value) at once.
#pragma once

#include "attention.hpp"
#include "detail/validate.hpp"

#include <Eigen/Core>

namespace sdpa {

template <class T>
using RowVector = Eigen::Matrix<T, 1, Eigen::Dynamic>;

/// Writes X W (+ b, added to every row) into `out`. X: N x d_in, W: d_in x d_out (q_i = x_i W,
/// as in the literature), b: empty or 1 x d_out, out: N x d_out.
template <class T>
void project_into(const ConstRef<T>& X, const ConstRef<T>& W, const RowVector<T>& b, Ref<T> out,
                  const char* function = "project") {
  if (X.cols() != W.rows())
    detail::fail(function, "X is ", detail::shape(X.rows(), X.cols()), " and W is ", detail::shape(W.rows(), W.cols()),
                 ": X's columns must equal W's rows (d_in)");
  if (b.size() != 0 && b.size() != W.cols())
    detail::fail(function, "b is 1x", b.size(), " and W is ", detail::shape(W.rows(), W.cols()),
                 ": the bias needs one entry per output column");
  if (out.rows() != X.rows() || out.cols() != W.cols())
    detail::fail(function, "out is ", detail::shape(out.rows(), out.cols()), " but X W is ",
                 detail::shape(X.rows(), W.cols()));
  out.noalias() = X * W;
  if (b.size() != 0) out.rowwise() += b;
}

/// X W + b as a new matrix (b may be empty: no bias).
template <class DX, class DW>
Matrix<typename DX::Scalar> project(const Eigen::MatrixBase<DX>& X, const Eigen::MatrixBase<DW>& W,
                                    const RowVector<typename DX::Scalar>& b = {}) {
  using T = typename DX::Scalar;
  const ConstRef<T> x(X.derived()), w(W.derived());
  Matrix<T> out(x.rows(), w.cols());
  project_into<T>(x, w, b, out);
  return out;
}

}  // namespace sdpa
