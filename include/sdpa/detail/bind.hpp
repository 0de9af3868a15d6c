// sdpa/detail/bind.hpp - how an Eigen argument becomes a view the kernels read or write.
//
// Eigen::Ref is not used for this: it replaces an outer stride of 0 (a Map that repeats one
// row) by the natural stride, so a one-row broadcast would be read, or written, as a whole
// matrix past the end of its buffer. The strides come from the argument itself instead.
#pragma once

#include "../config.hpp"
#include "../views.hpp"
#include "validate.hpp"

#include <Eigen/Core>

#include <type_traits>
#include <utility>

SDPA_BEGIN_NAMESPACE
namespace detail {

template <class D>
constexpr bool has_direct_access = (Eigen::internal::traits<D>::Flags & Eigen::DirectAccessBit) != 0;

/// An input matrix, read in place when its rows are contiguous and its row stride is not
/// negative (0 repeats row 0: a broadcast), otherwise evaluated once into a row-major copy
/// (column-major storage, expressions such as A * B, negative or zero column strides).
template <class T>
class Input {
 public:
  template <class D>
  explicit Input(const Eigen::MatrixBase<D>& m) {
    static_assert(std::is_same_v<typename D::Scalar, T>, "sdpa: every matrix of a call needs the same scalar type");
    if constexpr (has_direct_access<D>) {
      const D& d = m.derived();
      source_ = {d.data(), d.rows(), d.cols(), d.rowStride(), d.colStride()};
      if ((d.colStride() == 1 || d.cols() <= 1) && d.rowStride() >= 0) {
        view_ = {d.data(), d.rows(), d.cols(), d.rows() <= 1 ? d.cols() : d.rowStride()};
        return;
      }
    }
    copy_ = m;
    view_ = {copy_.data(), copy_.rows(), copy_.cols(), copy_.cols()};
  }
  Input(const Input&) = delete;
  Input& operator=(const Input&) = delete;

  /// What the kernels read: the argument's memory, or the copy.
  const MatrixView<const T>& view() const { return view_; }
  /// The argument's own memory, whatever its strides (empty for an expression without
  /// storage): what an output must not overlap, even when the kernels read a copy.
  const MatrixView<const T>& source() const { return source_; }
  Index rows() const { return view_.rows; }
  Index cols() const { return view_.cols; }
  /// The same memory as an Eigen Map (for Eigen's products), strides included.
  auto map() const {
    using Plain = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
    return Eigen::Map<const Plain, Eigen::Unaligned, Eigen::OuterStride<>>(view_.data, view_.rows, view_.cols,
                                                                          Eigen::OuterStride<>(view_.row_stride));
  }

 private:
  Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor> copy_;
  MatrixView<const T> view_, source_;
};

/// True for an Eigen object a result can be written into in place: a Matrix, a Map or a
/// block of one (writable, with direct access).
template <class D>
constexpr bool is_writable_matrix() {
  using Plain = std::remove_cv_t<std::remove_reference_t<D>>;
  if constexpr (std::is_base_of_v<Eigen::DenseBase<Plain>, Plain>)
    return has_direct_access<Plain> && (Eigen::internal::traits<Plain>::Flags & Eigen::LvalueBit) != 0 &&
           !std::is_const_v<std::remove_reference_t<D>>;
  else
    return false;
}

/// An output matrix as a view, after checking that every element has a place of its own:
/// contiguous rows (row-major), a row stride of at least the number of columns.
template <class T, class D>
MatrixView<T> output_view(const char* function, const char* name, D& m) {
  static_assert(std::is_same_v<typename D::Scalar, T>, "sdpa: every matrix of a call needs the same scalar type");
  static_assert(D::IsRowMajor || D::RowsAtCompileTime == 1 || D::ColsAtCompileTime == 1,
                "sdpa: results are written into row-major matrices (Matrix<T, ..., Eigen::RowMajor>)");
  if (m.rows() > 0 && m.cols() > 1 && m.colStride() != 1)
    fail(function, name, " (", shape(m.rows(), m.cols()), ") has a column stride of ", m.colStride(),
         ": results are written into contiguous rows");
  if (m.rows() > 1 && m.cols() > 0 && m.rowStride() < m.cols())
    fail(function, name, " (", shape(m.rows(), m.cols()), ") has a row stride of ", m.rowStride(),
         ": its rows overlap, so results would overwrite each other (it needs a stride of at least ", m.cols(), ")");
  return {m.data(), m.rows(), m.cols(), m.rows() <= 1 ? m.cols() : m.rowStride()};
}

}  // namespace detail
SDPA_END_NAMESPACE
