// sdpa/detail/validate.hpp - every precondition of a call, checked once, before anything is written.
//
// Messages name the function, the argument and the shapes involved, e.g.
//   sdpa::attention: Q is 3x8 and K is 5x4: their head dims (8 and 4) must match
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

SDPA_BEGIN_NAMESPACE
namespace detail {

inline std::string shape(Index rows, Index cols) { return std::to_string(rows) + "x" + std::to_string(cols); }

template <class... Parts>
[[noreturn]] void fail(const char* function, const Parts&... parts) {
  std::ostringstream message;
  message << "sdpa::" << function << ": ";
  (message << ... << parts);
  throw std::invalid_argument(message.str());
}

/// The most threads a call takes (Options::threads): more would only oversubscribe the
/// machine, and OpenMP runtimes end the process when they cannot start the threads asked for.
inline constexpr int kMaxThreads = 1024;

/// The scale the call uses: options.scale or 1/sqrt(d_k). It must be positive and finite in
/// the element type T too (the kernels multiply by it, and by scale log2(e), in T).
template <class T>
double resolve_scale(const char* function, const Options& options, Index head_dim) {
  if (!options.scale) return 1.0 / std::sqrt(double(head_dim));
  const double scale = *options.scale;
  constexpr double kLog2e = 1.442695040888963407359924681001892137;
  if (!(scale > 0.0) || !std::isfinite(scale))
    fail(function, "options.scale is ", scale, ": it must be positive and finite");
  const T in_type = T(scale), base2 = T(scale * kLog2e);
  if (!(in_type > T(0)) || !std::isfinite(double(in_type)) || !std::isfinite(double(base2)))
    fail(function, "options.scale is ", scale, ": it must be positive and finite as a ", sizeof(T) * 8,
         "-bit float too (it is ", double(in_type), " there)");
  return scale;
}

/// The model variants: a window with sides >= 0, a positive finite cap, and per-head lists of
/// finite values with one entry per query head (`heads`: 1 for a 2-D call).
inline void validate_variants(const char* function, const Options& options, Index heads) {
  const Window& w = options.window;
  const auto side = [](Index n) { return n == Window::unbounded ? std::string("unbounded") : std::to_string(n); };
  if (w.left < 0 || w.right < 0)
    fail(function, "options.window is (left ", side(w.left), ", right ", side(w.right),
         "): each side must be >= 0 (or Window::unbounded)");
  if (options.softcap && (!(*options.softcap > 0.0) || !std::isfinite(*options.softcap)))
    fail(function, "options.softcap is ", *options.softcap, ": it must be positive and finite");
  const auto check_per_head = [&](const char* name, const std::vector<double>& values) {
    if (values.empty()) return;
    if (Index(values.size()) != heads)
      fail(function, name, " has ", values.size(), " entries but there ",
           heads == 1 ? "is 1 query head" : "are " + std::to_string(heads) + " query heads", ": give one per query head");
    for (std::size_t h = 0; h < values.size(); ++h)
      if (!std::isfinite(values[h])) fail(function, name, "[", h, "] is ", values[h], ": it must be finite");
  };
  check_per_head("options.alibi_slopes", options.alibi_slopes);
  check_per_head("options.sinks", options.sinks);
}

/// Shapes of Q (nq x dk), K (nk x dk_k) and, when present, V (nv x dv), and every option;
/// per-head lists need `heads` entries (the query heads of the call).
template <class T>
void validate_attention(const char* function, Index nq, Index dq, Index nk, Index dk, const Index* v_rows,
                        const Index* v_cols, const Options& options, Index heads = 1) {
  const std::string q = shape(nq, dq), k = shape(nk, dk);
  if (nq < 0 || dq < 0 || nk < 0 || dk < 0 || (v_rows && (*v_rows < 0 || *v_cols < 0)))
    fail(function, "Q is ", q, ", K is ", k, (v_rows ? ", V is " + shape(*v_rows, *v_cols) : std::string()),
         ": sizes must not be negative");
  if (dq != dk) fail(function, "Q is ", q, " and K is ", k, ": their head dims (", dq, " and ", dk, ") must match");
  if (dq == 0) fail(function, "Q is ", q, " and K is ", k, ": the head dim d_k must not be 0");
  if (v_rows) {
    const std::string v = shape(*v_rows, *v_cols);
    if (*v_rows != nk) fail(function, "K is ", k, " and V is ", v, ": they need the same number of rows (keys)");
    if (*v_cols == 0) fail(function, "V is ", v, ": the value head dim d_v must not be 0");
  }
  resolve_scale<T>(function, options, dq);

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
  validate_variants(function, options, heads);
  if (options.blocks.query_rows < 0 || options.blocks.key_rows < 0)
    fail(function, "options.blocks is ", options.blocks.query_rows, "x", options.blocks.key_rows,
         ": block sizes must be positive, or 0 for automatic");
  if (options.threads < 0 || options.threads > kMaxThreads)
    fail(function, "options.threads is ", options.threads, ": it must lie in [0, ", kMaxThreads, "] (0 = automatic)");
}

/// A 2-D call (one head) cannot honour the batched masks, which are indexed by sequence and
/// head: it says so instead of ignoring them.
inline void reject_batched_options(const char* function, const Options& options) {
  const char* given = !options.batch_mask.empty()         ? "options.batch_mask"
                      : !options.batch_bias.empty()       ? "options.batch_bias"
                      : !options.sequence_lengths.empty() ? "options.sequence_lengths"
                                                          : nullptr;
  if (given)
    fail(function, given, " is set, but it applies only to batched calls (sdpa::attention on TensorViews); ",
         "a 2-D call takes options.mask, options.bias and options.key_lengths");
}

/// True when two views share an element. Views with the same row stride and unit column
/// stride (column slices of one matrix, such as the heads of a [tokens, heads * d] buffer)
/// are compared exactly; any other pair conservatively by the address ranges they span.
template <class A, class B>
bool overlaps(const MatrixView<A>& a, const MatrixView<B>& b) {
  if (a.rows == 0 || a.cols == 0 || b.rows == 0 || b.cols == 0) return false;
  // The lowest and highest addresses a view touches, whatever the signs of its strides.
  const auto first = [](const auto& v) {
    return reinterpret_cast<std::uintptr_t>(v.data + std::min<Index>(0, (v.rows - 1) * v.row_stride) +
                                            std::min<Index>(0, (v.cols - 1) * v.col_stride));
  };
  const auto last = [](const auto& v) {
    return reinterpret_cast<std::uintptr_t>(v.data + std::max<Index>(0, (v.rows - 1) * v.row_stride) +
                                            std::max<Index>(0, (v.cols - 1) * v.col_stride));
  };
  if (last(a) < first(b) || last(b) < first(a)) return false;
  const Index stride = a.row_stride;
  if (sizeof(A) != sizeof(B) || stride != b.row_stride || a.col_stride != 1 || b.col_stride != 1 || stride <= 0)
    return true;
  const std::ptrdiff_t bytes = std::ptrdiff_t(first(b) - first(a));
  if (bytes % std::ptrdiff_t(sizeof(A)) != 0) return true;
  // Column offset of b's rows within a's row slots: b covers [r, r + b.cols) of each slot.
  const Index r = ((Index(bytes / std::ptrdiff_t(sizeof(A))) % stride) + stride) % stride;
  return !(r >= a.cols && r + b.cols <= stride);
}

/// The output must have the result's shape and must touch no input: not Q, K, V, a mask or
/// a bias (all still being read while it is written), nor the LSE output.
/// `inputs`: (name, view) pairs, of any element types.
template <class T, class L, class... Inputs>
void validate_output(const char* function, const MatrixView<T>& out, Index nq, Index dv, const Options& options,
                     const L* lse, const std::pair<const char*, Inputs>&... inputs) {
  if (out.rows != nq || out.cols != dv)
    fail(function, "out is ", shape(out.rows, out.cols), " but the result is ", shape(nq, dv), " (Nq x d_v)");
  const MatrixView<const L> lse_view(lse, lse ? nq : 0, 1, 1);
  const auto check = [&](const char* name, const auto& input) {
    if (overlaps(MatrixView<const T>(out), input))
      fail(function, "out (", shape(out.rows, out.cols), ") overlaps ", name, " (", shape(input.rows, input.cols),
           "): results would overwrite inputs still being read");
    if (lse && overlaps(lse_view, input))
      fail(function, "lse (", nq, " entries) overlaps ", name, " (", shape(input.rows, input.cols),
           "): results would overwrite inputs still being read");
  };
  (check(inputs.first, inputs.second), ...);
  if (!options.mask.empty()) check("options.mask", options.mask);
  if (!options.bias.f32.empty()) check("options.bias", options.bias.f32);
  if (!options.bias.f64.empty()) check("options.bias", options.bias.f64);
  if (lse && overlaps(lse_view, MatrixView<const T>(out))) fail(function, "lse and out overlap");
}

}  // namespace detail
SDPA_END_NAMESPACE
