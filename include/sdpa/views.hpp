// sdpa/views.hpp - a non-owning strided view of a matrix in someone else's memory.
//
// The kernels never copy user data to change its layout: they read through a pointer
// and two strides. A view made from an Eigen object keeps that object's layout (row- or
// column-major, any outer stride); a stride of 0 repeats a row or a column, which is how a
// 1 x Nk padding mask broadcasts over every query.
/// \file
/// Non-owning strided views of other memory: MatrixView, TensorView, FusedQKV.
#pragma once

#include <Eigen/Core>

#include <type_traits>

namespace sdpa {

/// Sizes, indices and strides: Eigen's signed index type (std::ptrdiff_t by default).
using Index = Eigen::Index;

/// Rows x cols elements at data[i * row_stride + j * col_stride]. Does not own `data`:
/// whatever it views must outlive it.
template <class T>
struct MatrixView {
  /// Element (0, 0); nullptr for an empty view.
  T* data = nullptr;
  /// Number of rows.
  Index rows = 0;
  /// Number of columns.
  Index cols = 0;
  /// Elements from one row to the next (0 repeats row 0).
  Index row_stride = 0;
  /// Elements from one column to the next (0 repeats column 0).
  Index col_stride = 1;

  /// An empty view: no data, 0 x 0.
  MatrixView() = default;
  /// Views rows_ x cols_ elements at data_[i * row_stride_ + j * col_stride_].
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
  /// Deleted: a view of a temporary Matrix would dangle as soon as the statement ends. (A
  /// temporary block of a matrix, M.topRows(n), views M's memory and is fine.)
  template <class Plain, class = std::enable_if_t<!std::is_lvalue_reference_v<Plain> &&
                                                  std::is_base_of_v<Eigen::PlainObjectBase<Plain>, Plain>>>
  MatrixView(Plain&& m) = delete;

  /// A view of the same memory that is read-only.
  operator MatrixView<const T>() const { return {data, rows, cols, row_stride, col_stride}; }

  /// True when the view has no data (default-constructed).
  bool empty() const { return data == nullptr; }
  /// Element (i, j); not bounds-checked.
  T& operator()(Index i, Index j) const { return data[i * row_stride + j * col_stride]; }
  /// The first element of row i.
  T* row(Index i) const { return data + i * row_stride; }

  /// Rows [first, first + count) (no data when the view has none: an empty Eigen matrix).
  MatrixView middle_rows(Index first, Index count) const {
    return {data ? data + first * row_stride : nullptr, count, cols, row_stride, col_stride};
  }
  /// Columns [first, first + count): one head's slice of a projected [tokens, heads * d] matrix.
  MatrixView middle_cols(Index first, Index count) const {
    return {data ? data + first * col_stride : nullptr, rows, count, row_stride, col_stride};
  }
};

/// Rows stored in fixed-size pages (a paged KV cache): logical row i is row i % page_rows of
/// page table[i / page_rows], pages `page_stride` elements apart from `base`, rows within a
/// page `row_stride` apart. Like MatrixView it does not own what it views (the pool, the table).
template <class T>
struct PagedView {
  /// Row 0 of page 0 of the pool.
  T* base = nullptr;
  /// Page of each page_rows logical rows: ceil((first + rows) / page_rows) entries.
  const Index* table = nullptr;
  /// Rows per page; elements from one page to the next; from one row to the next in a page.
  /// @{
  Index page_rows = 1, page_stride = 0, row_stride = 0;
  /// @}
  /// Logical rows and columns; the logical row the view starts at (a piece of a longer one).
  /// @{
  Index rows = 0, cols = 0, first = 0;
  /// @}

  /// The first element of logical row i.
  T* row(Index i) const {
    const Index r = first + i;
    return base + table[r / page_rows] * page_stride + (r % page_rows) * row_stride;
  }
  /// Rows from i on that are contiguous (row_stride apart): up to the end of i's page.
  Index run(Index i) const { return page_rows - (first + i) % page_rows; }
  /// Rows [first, first + count).
  PagedView middle_rows(Index from, Index count) const {
    PagedView view = *this;
    view.first += from;
    view.rows = count;
    return view;
  }
};

/// A batch of multi-head sequences in someone else's memory, seen as [batch, heads, tokens,
/// features] whatever the memory order: element (b, h, n, f) is at
/// data[b * batch_stride + h * head_stride + n * token_stride + f]. Features are contiguous;
/// the other strides say the layout, so [B, H, N, d], [B, N, H, d] and the Q, K, V parts of a
/// fused [B, N, 3, H, d] buffer are all read in place. A stride of 0 repeats (broadcasts).
template <class T>
struct TensorView {
  /// Element (0, 0, 0, 0); nullptr for an empty view.
  T* data = nullptr;
  /// The sizes of the four dimensions: sequences, heads per sequence, tokens per head,
  /// features per token.
  /// @{
  Index batch = 0, heads = 0, tokens = 0, features = 0;
  /// @}
  /// Elements from one sequence, head or token to the next (features are contiguous);
  /// 0 repeats (broadcasts) that dimension.
  /// @{
  Index batch_stride = 0, head_stride = 0, token_stride = 0;
  /// @}

  /// [batch, heads, tokens, features], contiguous (PyTorch's default for attention).
  static TensorView bhnd(T* data, Index batch, Index heads, Index tokens, Index features) {
    return {data, batch, heads, tokens, features, heads * tokens * features, tokens * features, features};
  }
  /// [batch, tokens, heads, features], contiguous (what a projection of [B, N, d_model] gives).
  static TensorView bnhd(T* data, Index batch, Index tokens, Index heads, Index features) {
    return {data, batch, heads, tokens, features, tokens * heads * features, features, heads * features};
  }

  /// A view of the same memory that is read-only.
  operator TensorView<const T>() const {  // NOLINT(google-explicit-constructor)
    return {data, batch, heads, tokens, features, batch_stride, head_stride, token_stride};
  }
  /// True when the view has no data (default-constructed).
  bool empty() const { return data == nullptr; }
  /// One head of one sequence: tokens x features (no data when the view has none).
  MatrixView<T> head(Index b, Index h) const {
    return {data ? data + b * batch_stride + h * head_stride : nullptr, tokens, features, token_stride};
  }
};

/// Q, K and V inside one fused projection buffer laid out [batch, tokens, 3, heads, features].
template <class T>
struct FusedQKV {
  /// The query, key and value parts, each [batch, heads, tokens, features].
  /// @{
  TensorView<T> q, k, v;
  /// @}

  /// Views the buffer at data, laid out [batch, tokens, 3, heads, features], as its Q, K and
  /// V parts (no copy).
  FusedQKV(T* data, Index batch, Index tokens, Index heads, Index features) {
    const Index token_stride = 3 * heads * features, batch_stride = tokens * token_stride;
    q = {data, batch, heads, tokens, features, batch_stride, features, token_stride};
    k = q;
    k.data = data + heads * features;
    v = q;
    v.data = data + 2 * heads * features;
  }
};

}  // namespace sdpa
