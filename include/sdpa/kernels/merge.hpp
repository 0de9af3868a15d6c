// sdpa/kernels/merge.hpp - two partial attention results over disjoint keys, made one.
#pragma once

#include "../config.hpp"
#include "../views.hpp"

#include <algorithm>
#include <cmath>
#include <limits>

SDPA_BEGIN_NAMESPACE
namespace kernels {

/// Merges partial results over disjoint key sets, in place: (out, lse) becomes the attention
/// over both sets. o = (e^(lse - m) o + e^(lse_b - m) o_b) / (e^(lse - m) + e^(lse_b - m)) with
/// m the larger LSE; an empty part (LSE -inf) weighs nothing, a NaN LSE (a part that saw a
/// NaN or +inf score) makes the row NaN. Outputs of a 16-bit type O are merged in T (float),
/// the LSEs' type, and rounded once.
template <class O, class T>
void merge_partial(MatrixView<O> out, T* lse, MatrixView<const O> out_b, const T* lse_b) {
  for (Index i = 0; i < out.rows; ++i) {
    if (std::isnan(lse[i]) || std::isnan(lse_b[i])) {
      std::fill(out.row(i), out.row(i) + out.cols, O(std::numeric_limits<T>::quiet_NaN()));
      lse[i] = std::numeric_limits<T>::quiet_NaN();
      continue;
    }
    const T m = std::max(lse[i], lse_b[i]);
    if (m == -std::numeric_limits<T>::infinity()) continue;  // both empty: stays 0, -inf
    const T wa = std::exp(lse[i] - m), wb = std::exp(lse_b[i] - m), total = wa + wb;
    O* o = out.row(i);
    const O* ob = out_b.row(i);
    for (Index c = 0; c < out.cols; ++c) o[c] = O((wa * T(o[c]) + wb * T(ob[c])) / total);
    lse[i] = m + std::log(total);
  }
}

/// Adds a sink logit to one row's partial result (out_row, lse): the sink joins the softmax
/// denominator and contributes no value, so the row is scaled by e^lse / (e^lse + e^sink) and
/// its LSE becomes log(e^lse + e^sink). A row that saw no key (LSE -inf) stays 0 with LSE sink;
/// NaN stays NaN.
template <class O, class T>
void add_sink(O* out_row, Index cols, T& lse, T sink) {
  const T m = std::max(lse, sink);  // NaN lse stays NaN
  if (std::isnan(m) || m == -std::numeric_limits<T>::infinity()) return;
  const T keys = std::exp(lse - m), total = keys + std::exp(sink - m);
  for (Index c = 0; c < cols; ++c) out_row[c] = O(T(out_row[c]) * (keys / total));
  lse = m + std::log(total);
}

}  // namespace kernels
SDPA_END_NAMESPACE
