// sdpa/detail/validate.hpp - every precondition of a call, checked once, before anything is written.
//
// Messages name the function, the argument and the shapes involved, e.g.
//   sdpa::attention: Q is 3x8 and K is 5x4: their head dims (8 and 4) must match
#pragma once

#include "../options.hpp"

#include <cmath>
#include <sstream>
#include <stdexcept>
#include <string>

namespace sdpa::detail {

inline std::string shape(Index rows, Index cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

template <class... Parts>
[[noreturn]] void fail(const char* function, const Parts&... parts) {
  std::ostringstream message;
  message << "sdpa::" << function << ": ";
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

/// The scale the call uses: options.scale or 1/sqrt(d_k).
inline double resolve_scale(const char* function, const Options& options, Index head_dim) {
  if (!options.scale) return 1.0 / std::sqrt(double(head_dim));
  const double scale = *options.scale;
  if (!(scale > 0.0) || !std::isfinite(scale))
    fail(function, "options.scale is ", scale, ": it must be positive and finite");
  return scale;
}

/// Shapes of Q (nq x dk), K (nk x dk_k) and, when present, V (nv x dv), and every option.
inline void validate_attention(const char* function, Index nq, Index dq, Index nk, Index dk, const Index* v_rows,
                               const Index* v_cols, const Options& options) {
  const std::string q = shape(nq, dq), k = shape(nk, dk);
  if (dq != dk) fail(function, "Q is ", q, " and K is ", k, ": their head dims (", dq, " and ", dk, ") must match");
  if (dq == 0) fail(function, "Q is ", q, " and K is ", k, ": the head dim d_k must not be 0");
  if (v_rows) {
    const std::string v = shape(*v_rows, *v_cols);
    if (*v_rows != nk) fail(function, "K is ", k, " and V is ", v, ": they need the same number of rows (keys)");
    if (*v_cols == 0) fail(function, "V is ", v, ": the value head dim d_v must not be 0");
  }
  resolve_scale(function, options, dq);

  const std::string scores = shape(nq, nk);
  const auto check_mask_shape = [&](const char* name, Index rows, Index cols) {
    if ((rows != nq && rows != 1) || cols != nk)
      fail(function, name, " is ", shape(rows, cols), " but the scores Q K^T are ", scores, " (Q is ", q, ", K is ",
           k, "): it must be ", scores, " or 1x", nk);
  };
  if (!options.mask.empty()) check_mask_shape("options.mask", options.mask.rows, options.mask.cols);
  if (!options.bias.empty()) check_mask_shape("options.bias", options.bias.rows(), options.bias.cols());

  const auto& lengths = options.key_lengths;
  if (!lengths.empty()) {
    if (Index(lengths.size()) != nq && lengths.size() != 1)
      fail(function, "options.key_lengths has ", lengths.size(), " entries but Q is ", q, ": give one per query (",
           nq, ") or a single one for all");
    for (std::size_t i = 0; i < lengths.size(); ++i)
      if (lengths[i] < 0 || lengths[i] > nk)
        fail(function, "options.key_lengths[", i, "] is ", lengths[i], ": it must lie in [0, ", nk, "] (K is ", k,
             ")");
  }
  if (options.blocks.query_rows < 0 || options.blocks.key_rows < 0)
    fail(function, "options.blocks is ", options.blocks.query_rows, "x", options.blocks.key_rows,
         ": block sizes must be positive, or 0 for automatic");
  if (options.threads < 0) fail(function, "options.threads is ", options.threads, ": it must be >= 0 (0 = automatic)");
}

/// The output must have the result's shape and must not share memory with an input that
/// is still being read while it is written.
template <class T>
void validate_output(const char* function, const MatrixView<T>& out, Index nq, Index dv,
                     std::initializer_list<std::pair<const char*, MatrixView<const T>>> inputs) {
  if (out.rows != nq || out.cols != dv)
    fail(function, "out is ", shape(out.rows, out.cols), " but the result is ", shape(nq, dv), " (Nq x d_v)");
  const auto span = [](const auto& view) {
    const auto* first = reinterpret_cast<const char*>(view.data);
    const Index last = (view.rows - 1) * view.row_stride + (view.cols - 1) * view.col_stride;
    return std::pair(first, first + (last + 1) * Index(sizeof(T)));
  };
  if (out.rows == 0 || out.cols == 0) return;
  const auto [out_begin, out_end] = span(out);
  for (const auto& [name, input] : inputs) {
    if (input.rows == 0 || input.cols == 0) continue;
    const auto [in_begin, in_end] = span(input);
    if (in_begin < out_end && out_begin < in_end)
      fail(function, "out (", shape(out.rows, out.cols), ") overlaps ", name, " (", shape(input.rows, input.cols),
           "): results would overwrite inputs still being read");
  }
}

}  // namespace sdpa::detail
