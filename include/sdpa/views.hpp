// sdpa/views.hpp - a non-owning strided view of a matrix in someone else's memory.
//
// The kernels never copy user data to change its layout: they read through a pointer
// and two strides. A view made from an Eigen object keeps that object's layout (row- or
// column-major, any outer stride); a stride of 0 repeats a row or a column, which is how a
// 1 x Nk padding mask broadcasts over every query.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace sdpa {

using Index = Eigen::Index;

/// Rows x cols elements at data[i * row_stride + j * col_stride]. Does not own `data`:
/// whatever it views must outlive it.
template <class T>
struct MatrixView {
  T* data = nullptr;
  Index rows = 0;
  Index cols = 0;
  Index row_stride = 0;
  Index col_stride = 1;

  MatrixView() = default;
  MatrixView(T* data_, Index rows_, Index cols_, Index row_stride_, Index col_stride_ = 1)
      : data(data_), rows(rows_), cols(cols_), row_stride(row_stride_), col_stride(col_stride_) {}

  /// Views an Eigen object with direct access (Matrix, Map, Ref, Block of those).
  /// Expressions without storage (A + B, A.array() > 0) cannot be viewed: evaluate them first.
  template <class Derived, class = std::enable_if_t<
                               (Eigen::internal::traits<Derived>::Flags & Eigen::DirectAccessBit) != 0>>
  MatrixView(const Eigen::DenseBase<Derived>& m)  // NOLINT(google-explicit-constructor): a view is its matrix
      : data(const_cast<T*>(static_cast<const typename Derived::Scalar*>(m.derived().data()))),
        rows(m.rows()),
        cols(m.cols()),
        row_stride(m.derived().rowStride()),
        col_stride(m.derived().colStride()) {
    static_assert(std::is_same_v<std::remove_const_t<T>, typename Derived::Scalar>,
                  "sdpa::MatrixView: the view's element type must match the matrix's scalar type");
  }
  // A view of a temporary Matrix would dangle as soon as the statement ends. (A temporary
  // block of a matrix, M.topRows(n), views M's memory and is fine.)
  template <class Plain, class = std::enable_if_t<!std::is_lvalue_reference_v<Plain> &&
                                                  std::is_base_of_v<Eigen::PlainObjectBase<Plain>, Plain>>>
  MatrixView(Plain&& m) = delete;

  /// A view of the same memory that is read-only.
  operator MatrixView<const T>() const { return {data, rows, cols, row_stride, col_stride}; }

  bool empty() const { return data == nullptr; }
  T& operator()(Index i, Index j) const { return data[i * row_stride + j * col_stride]; }
  T* row(Index i) const { return data + i * row_stride; }

  /// Rows [first, first + count).
  MatrixView middle_rows(Index first, Index count) const {
    return {data + first * row_stride, count, cols, row_stride, col_stride};
  }
  /// Columns [first, first + count): one head's slice of a projected [tokens, heads * d] matrix.
  MatrixView middle_cols(Index first, Index count) const {
    return {data + first * col_stride, rows, count, row_stride, col_stride};
  }
};

}  // namespace sdpa
