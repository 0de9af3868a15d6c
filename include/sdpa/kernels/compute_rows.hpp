// sdpa/kernels/compute_rows.hpp - a head's queries and outputs as the tiled loop sees them: rows
// of the compute type T, whatever type they are stored in.
//
// The tiled loop (tiled_loop-inl.hpp) touches Q once per query tile, to copy it scaled into
// its tile, and the output once per row, to store it; everything in between is T. Reading
// and writing rows through these two views, each holding one conversion function for its
// storage type, compiles the loop once per Micro (per K/V storage type) instead of once per
// (Q, K/V, out) combination: a 16-bit Q had two (out of its own type, and float for split
// keys' partial results), and three Q types share each K/V type, so every Micro was compiled
// up to five times. A function call per row costs nothing beside the row's dot products.
#pragma once

#include "../config.hpp"
#include "../views.hpp"

SDPA_BEGIN_NAMESPACE
namespace kernels {

/// Prefetches the cache lines of [at, at + bytes), for reading or for writing, into L1.
inline void prefetch_bytes(const char* at, Index bytes, bool write = false) {
#if defined(__GNUC__) || defined(__clang__)
  for (Index byte = 0; byte < bytes; byte += 64) write ? __builtin_prefetch(at + byte, 1) : __builtin_prefetch(at + byte);
#else
  (void)at, (void)bytes, (void)write;
#endif
}

/// Prefetches the cache lines of [at, at + bytes), for reading, into L2 only (prefetcht1):
/// for data wanted a while from now, which into L1 would evict what is wanted sooner.
inline void prefetch_bytes_l2(const char* at, Index bytes) {
#if defined(__GNUC__) || defined(__clang__)
  for (Index byte = 0; byte < bytes; byte += 64) __builtin_prefetch(at + byte, 0, 2);
#else
  (void)at, (void)bytes;
#endif
}

/// Rows of a matrix of any element type Q, read as T: read_row(i, factor, to) sets
/// to[c] = T(q(i, c)) * factor.
template <class T>
class QueryRows {
 public:
  template <class Q>
  QueryRows(MatrixView<const Q> q)  // NOLINT(google-explicit-constructor): any view reads as T
      : rows(q.rows), cols(q.cols), data_(q.data), stride_(q.row_stride * Index(sizeof(Q))),
        row_bytes_(q.cols * Index(sizeof(Q))), read_(&read<Q>) {}

  void read_row(Index i, T factor, T* to) const { read_(static_cast<const char*>(data_) + i * stride_, cols, factor, to); }
  /// Asks for row i ahead of its read_row (rows of a [tokens, heads d] buffer, 1-4 KiB apart,
  /// are a stride the hardware prefetcher does not follow).
  void prefetch_row(Index i) const { prefetch_bytes(static_cast<const char*>(data_) + i * stride_, row_bytes_); }

  Index rows, cols;

 private:
  template <class Q>
  static void read(const void* row, Index n, T factor, T* to) {
    const Q* from = static_cast<const Q*>(row);
    for (Index c = 0; c < n; ++c) to[c] = T(from[c]) * factor;
  }
  const void* data_;
  Index stride_, row_bytes_;
  void (*read_)(const void*, Index, T, T*);
};

/// Rows of a matrix of any element type O, written from T: write_row(i, from) sets
/// out(i, c) = O(from[c]), rounded once.
template <class T>
class OutputRows {
 public:
  template <class O>
  OutputRows(MatrixView<O> out)  // NOLINT(google-explicit-constructor): any view is written from T
      : rows(out.rows), cols(out.cols), data_(out.data), stride_(out.row_stride * Index(sizeof(O))),
        row_bytes_(out.cols * Index(sizeof(O))), write_(&write<O>) {}

  void write_row(Index i, const T* from) const { write_(from, cols, static_cast<char*>(data_) + i * stride_); }
  /// Asks for row i, to be written, ahead of its write_row.
  void prefetch_row(Index i) const { prefetch_bytes(static_cast<const char*>(data_) + i * stride_, row_bytes_, true); }

  Index rows, cols;

 private:
  template <class O>
  static void write(const T* from, Index n, void* row) {
    O* to = static_cast<O*>(row);
    for (Index c = 0; c < n; ++c) to[c] = O(from[c]);
  }
  void* data_;
  Index stride_, row_bytes_;
  void (*write_)(const T*, Index, void*);
};

}  // namespace kernels
SDPA_END_NAMESPACE
