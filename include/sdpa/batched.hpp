// sdpa/batched.hpp - attention over [batch, heads, tokens, head_dim] views, with grouped-query
// heads, per-sequence padding and broadcast masks; threads across batch x heads x query tiles.
/// \file
/// Batched attention over TensorView arguments: every sequence and head of a batch, with
/// grouped-query heads, per-sequence padding and broadcast masks.
#pragma once

#include "attention.hpp"

#include <algorithm>
#include <cstdint>
#include <iterator>
#include <utility>
#include <vector>

SDPA_BEGIN_NAMESPACE

namespace detail {

inline std::string shape4(const char* name, Index b, Index h, Index n, Index d) {
  return std::string(name) + " [" + std::to_string(b) + ", " + std::to_string(h) + ", " + std::to_string(n) + ", " +
         std::to_string(d) + "]";
}
template <class T>
std::string shape4(const char* name, const TensorView<T>& t) {
  return shape4(name, t.batch, t.heads, t.tokens, t.features);
}

/// The address range [first, end) a view spans, for the overlap checks; false when the
/// arithmetic would overflow (strides no real buffer can have).
template <class T>
bool span(const TensorView<T>& t, std::pair<std::uintptr_t, std::uintptr_t>& range) {
  const auto first = reinterpret_cast<std::uintptr_t>(t.data);
  if (t.batch == 0 || t.heads == 0 || t.tokens == 0 || t.features == 0) {  // no elements: an empty range
    range = {first, first};
    return true;
  }
  Index last = t.features - 1;
  for (const auto& [size, stride] : {std::pair{t.batch, t.batch_stride}, {t.heads, t.head_stride}, {t.tokens, t.token_stride}}) {
    if (size > 1 && stride > (PTRDIFF_MAX / Index(sizeof(T)) - last) / (size - 1)) return false;
    if (size > 1) last += (size - 1) * stride;
  }
  range = {first, first + std::uintptr_t(last + 1) * sizeof(T)};
  return true;
}

/// True when no two elements (b, h, n, f) of `t` share an address: taken by increasing
/// stride, each dimension of size > 1 must step over everything the smaller ones span (the
/// check of PyTorch's "non-overlapping" tensors; layouts that interleave dimensions fail it
/// even when they happen not to overlap).
template <class T>
bool owns_its_elements(const TensorView<T>& t) {
  if (t.batch == 0 || t.heads == 0 || t.tokens == 0 || t.features == 0) return true;  // no elements at all
  std::pair<Index, Index> dims[3] = {{t.token_stride, t.tokens}, {t.head_stride, t.heads}, {t.batch_stride, t.batch}};
  std::sort(std::begin(dims), std::end(dims));
  Index extent = t.features;  // elements spanned by the dimensions taken so far
  for (const auto& [stride, size] : dims) {
    if (size <= 1) continue;
    if (stride < extent) return false;
    extent = stride * (size - 1) + extent;  // no overflow: span() checked the same sum
  }
  return true;
}

/// Whether a head of result `r` (any batch item) shares memory with a head of `input` (any
/// batch item); `same`: r and input are one view, whose heads are compared with the others
/// only. Views whose spans do not meet are not compared head by head (only the ones that
/// meet, e.g. the parts of a fused buffer, pay for the exact test).
template <class R, class I>
bool heads_overlap(const TensorView<R>& r, const TensorView<I>& input, bool same = false) {
  std::pair<std::uintptr_t, std::uintptr_t> a, b;
  if (!r.data || !input.data) return false;
  if (span(r, a) && span(input, b) && (a.first == a.second || b.first == b.second || a.second <= b.first || b.second <= a.first))
    return false;
  for (Index rb = 0; rb < r.batch; ++rb)
    for (Index ib = 0; ib < input.batch; ++ib)
      for (Index rh = 0; rh < r.heads; ++rh)
        for (Index ih = 0; ih < input.heads; ++ih)
          if (!(same && rb == ib && rh == ih) && overlaps(MatrixView<const R>(r.head(rb, rh)), input.head(ib, ih)))
            return true;
  return false;
}

/// Whether a head of result `r` shares memory with a mask or bias of the options, 2-D or batched.
template <class R>
bool overlaps_masks(const TensorView<R>& r, const Options& options) {
  const auto any_head = [&](const auto& m) {
    for (Index b = 0; b < r.batch; ++b)
      for (Index h = 0; h < r.heads; ++h)
        if (overlaps(MatrixView<const R>(r.head(b, h)), m)) return true;
    return false;
  };
  return (!options.mask.empty() && any_head(options.mask)) || (!options.bias.f32.empty() && any_head(options.bias.f32)) ||
         (!options.bias.f64.empty() && any_head(options.bias.f64)) ||
         (!options.batch_mask.empty() && heads_overlap(r, options.batch_mask)) ||
         (!options.batch_bias.empty() && heads_overlap(r, options.batch_bias));
}

/// `lse` is [B, H_q, N_q, 1] for queries q, each head's LSEs contiguous, at addressable strides.
template <class C, class T>
void check_lse_view(const char* fn, const TensorView<const C>& lse, const TensorView<const T>& q) {
  std::pair<std::uintptr_t, std::uintptr_t> range;
  if (lse.batch != q.batch || lse.heads != q.heads || lse.tokens != q.tokens || lse.features != 1 ||
      (lse.tokens > 1 && lse.token_stride != 1))
    fail(fn, shape4("lse", lse), " must be [", q.batch, ", ", q.heads, ", ", q.tokens,
         ", 1] with each head's LSEs contiguous (token stride 1, not ", lse.token_stride, ")");
  if (lse.batch_stride < 0 || lse.head_stride < 0 || !span(lse, range))
    fail(fn, "lse's strides must not be negative or too large to address");
}

template <class T, class S>
void validate_batched(const TensorView<const T>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                      const TensorView<T>& out, const Options& options, const char* fn = "attention") {
  const std::string all = shape4("Q", q) + ", " + shape4("K", k) + ", " + shape4("V", v) + ", " + shape4("out", out);
  const auto each_view = [&](const auto& f) { f(q), f(k), f(v), f(TensorView<const T>(out)); };
  bool negative_size = false, negative_stride = false, unaddressable = false;
  std::pair<std::uintptr_t, std::uintptr_t> range;
  each_view([&](const auto& t) {
    negative_size |= t.batch < 0 || t.heads < 0 || t.tokens < 0 || t.features < 0;
    negative_stride |= t.batch_stride < 0 || t.head_stride < 0 || t.token_stride < 0;
    unaddressable |= !negative_size && !negative_stride && !span(t, range);
  });
  if (negative_size) fail(fn, "sizes must not be negative: ", all);
  if (k.batch != q.batch || v.batch != q.batch || out.batch != q.batch)
    fail(fn, "batch sizes differ: ", all);
  if (k.heads != v.heads) fail(fn, "K and V need the same number of heads: ", all);
  if (k.heads == 0 || q.heads % k.heads != 0)
    fail(fn, "query heads (", q.heads, ") must be a multiple of key/value heads (", k.heads, "): ", all);
  const Index dk = features<S>(k.features), dv = features<S>(v.features);  // int8 views count blocks
  if (out.heads != q.heads || out.tokens != q.tokens || out.features != dv)
    fail(fn, "out must be [", q.batch, ", ", q.heads, ", ", q.tokens, ", ", dv, "]: ", all);
  if (negative_stride) fail(fn, "strides must not be negative: ", all);
  if (unaddressable) fail(fn, "strides too large to address: ", all);
  if (!owns_its_elements(out))
    fail(fn, "out's strides (batch ", out.batch_stride, ", head ", out.head_stride, ", token ", out.token_stride,
         ") give two elements one place: results would overwrite each other: ", all);
  validate_attention<compute_type<T>>(fn, q.tokens, q.features, k.tokens, dk, &v.tokens, &dv, options, q.heads);
  check_kernel_for<S>(fn, options);

  const auto check_broadcast = [&](const char* name, Index b, Index h, Index n, Index keys) {
    if ((b != 1 && b != q.batch) || (h != 1 && h != q.heads) || (n != 1 && n != q.tokens) || keys != k.tokens)
      fail(fn, name, " is ", shape4("", b, h, n, keys).substr(1), " but the scores are [", q.batch, ", ", q.heads, ", ",
           q.tokens, ", ", k.tokens, "]: each size must match or be 1");
  };
  const auto check_strides = [&](const char* name, const auto& m) {
    if (m.batch_stride < 0 || m.head_stride < 0 || m.token_stride < 0 || !span(m, range))
      fail(fn, name, "'s strides (", m.batch_stride, ", ", m.head_stride, ", ", m.token_stride,
           ") must not be negative or too large to address");
  };
  if (!options.batch_mask.empty()) {
    if (!options.mask.empty()) fail(fn, "give options.mask or options.batch_mask, not both");
    const auto& m = options.batch_mask;
    check_broadcast("options.batch_mask", m.batch, m.heads, m.tokens, m.features);
    check_strides("options.batch_mask", m);
  }
  if (!options.batch_bias.empty()) {
    if (!options.bias.empty()) fail(fn, "give options.bias or options.batch_bias, not both");
    const auto& m = options.batch_bias;
    check_broadcast("options.batch_bias", m.batch, m.heads, m.tokens, m.features);
    check_strides("options.batch_bias", m);
  }
  const auto& lengths = options.sequence_lengths;
  if (!lengths.empty()) {
    if (!options.key_lengths.empty()) fail(fn, "give options.key_lengths or options.sequence_lengths, not both");
    if (Index(lengths.size()) != q.batch)
      fail(fn, "options.sequence_lengths has ", lengths.size(), " entries for a batch of ", q.batch);
    for (std::size_t b = 0; b < lengths.size(); ++b)
      if (lengths[b] < 0 || lengths[b] > k.tokens)
        fail(fn, "options.sequence_lengths[", b, "] is ", lengths[b], ": it must lie in [0, ", k.tokens, "]");
  }
  // Overlap: exact per head when the spans meet (a fused buffer holding the output too).
  std::pair<std::uintptr_t, std::uintptr_t> out_range, in_range;
  span(out, out_range);
  const auto disjoint = [&](const auto& input) {
    return input.data == nullptr || !span(input, in_range) || in_range.first == in_range.second ||
           out_range.first == out_range.second || in_range.second <= out_range.first ||
           out_range.second <= in_range.first;
  };
  if (out.data) {
    if (!options.batch_mask.empty() && !disjoint(options.batch_mask)) fail(fn, "out overlaps options.batch_mask: ", all);
    if (!options.batch_bias.empty() && !disjoint(options.batch_bias)) fail(fn, "out overlaps options.batch_bias: ", all);
    const auto check_2d = [&](const char* name, const auto& m) {
      for (Index b = 0; b < q.batch; ++b)
        for (Index h = 0; h < out.heads; ++h)
          if (overlaps(MatrixView<const T>(out.head(b, h)), m)) fail(fn, "out overlaps ", name, ": ", all);
    };
    if (!options.mask.empty()) check_2d("options.mask", options.mask);
    if (!options.bias.f32.empty()) check_2d("options.bias", options.bias.f32);
    if (!options.bias.f64.empty()) check_2d("options.bias", options.bias.f64);
  }
  const auto check_input = [&](const char* name, const auto& input) {
    if (!out.data || disjoint(input)) return;
    for (Index b = 0; b < q.batch; ++b)
      for (Index h = 0; h < out.heads; ++h)
        for (Index hi = 0; hi < input.heads; ++hi)
          if (overlaps(MatrixView<const T>(out.head(b, h)), input.head(b, hi)))
            fail(fn, "out overlaps ", name, " (batch ", b, "): results would overwrite inputs still being read");
  };
  check_input("Q", q);
  check_input("K", k);
  check_input("V", v);
}

}  // namespace detail

/// Attention for every sequence of a batch and every head: out[b, h] = softmax(scale Q[b, h]
/// K[b, g(h)]^T + masks) V[b, g(h)], where g(h) = h / (H_q / H_kv) lets H_q query heads share
/// H_kv key/value heads (grouped-query attention; H_kv = 1 is multi-query) without copying.
/// Views are read and written in place, in any layout (TensorView::bhnd, TensorView::bnhd, FusedQKV).
/// Masks: options.mask / bias / key_lengths apply to every head; options.batch_mask /
/// batch_bias broadcast over sizes of 1; options.sequence_lengths pads each sequence.
///
///     auto q = sdpa::TensorView<const float>::bnhd(Q.data(), B, N, H, d);   // [B, N, H, d] memory
///     auto o = sdpa::TensorView<float>::bnhd(O.data(), B, N, H, d);
///     sdpa::attention(q, k, v, o, options);
///
/// Element types as in the 2-D attention(): K and V may be 16-bit under float or 16-bit Q
/// (a half-precision KV cache).
template <class T, class S>
void attention(const TensorView<const T>& q, const TensorView<const S>& k, const TensorView<const S>& v,
               const TensorView<T>& out, const Options& options = {}) {
  detail::check_storage<T, S>();
  sdpa::isa();  // first of all, the CPU check (isa.hpp): before code built for the wider ISA runs
  detail::validate_batched(q, k, v, out, options);
  if (q.batch == 0 || q.heads == 0) return;
  const double scale = detail::resolve_scale<compute_type<T>>("attention", options, q.features);
  const Index group = q.heads / k.heads;
  const Kernel kernel = detail::resolve_kernel<T>(options.kernel, q.tokens, k.tokens);
  const BlockConfig blocks = kernels::choose_blocks(options.blocks, q.tokens, k.tokens, q.features, out.features,
                                                    Index(sizeof(compute_type<T>)), 1, 1);
  const Index query_tiles = (q.tokens + blocks.query_rows - 1) / blocks.query_rows;
  // Few query tiles in all (decoding a small batch): head by head, each splitting its keys.
  const bool pooled = kernel != Kernel::Reference && q.batch * q.heads * query_tiles >= 4;
  if (!pooled) {
    for (Index b = 0; b < q.batch; ++b)
      for (Index h = 0; h < q.heads; ++h)
        detail::dispatch<T, S>(q.head(b, h), k.head(b, h / group), v.head(b, h / group), out.head(b, h), nullptr, scale,
                            detail::head_masks(options, b, h), options);
    return;
  }
  if constexpr (std::is_same_v<compute_type<T>, float>) {
    if (kernel == Kernel::Simd)
      return kernels::with_target(sdpa::isa(), [&](auto target) {
        decltype(target)::simd_batch(q, k, v, out, scale, options);
      });
  }
  if constexpr (!is_quantized<S>) kernels::scalar::Target::blocked_batch(q, k, v, out, scale, options);
}

/// The batched attention that also writes each row's LSE into `lse`, [B, H_q, N_q, 1] with
/// each head's LSEs contiguous (TensorView::bhnd(data, B, H, N, 1)): what the batched
/// attention_backward reads. (Heads run one after another, each on every thread.)
template <class T, class S>
void attention(const TensorView<const T>& q, const TensorView<const S>& k, const TensorView<const S>& v,
               const TensorView<T>& out, const TensorView<compute_type<T>>& lse, const Options& options = {}) {
  detail::check_storage<T, S>();
  sdpa::isa();
  detail::validate_batched(q, k, v, out, options);
  detail::check_lse_view("attention", TensorView<const compute_type<T>>(lse), q);
  if (!detail::owns_its_elements(lse))
    detail::fail("attention", detail::shape4("lse", lse), "'s strides give two LSEs one place: they would overwrite each other");
  if (detail::heads_overlap(lse, q) || detail::heads_overlap(lse, k) || detail::heads_overlap(lse, v) ||
      detail::heads_overlap(lse, TensorView<const T>(out)) || detail::overlaps_masks(lse, options))
    detail::fail("attention", detail::shape4("lse", lse), " overlaps Q, K, V, out or a mask or bias of the options");
  if (q.batch == 0 || q.heads == 0) return;
  const double scale = detail::resolve_scale<compute_type<T>>("attention", options, q.features);
  const Index group = q.heads / k.heads;
  for (Index b = 0; b < q.batch; ++b)
    for (Index h = 0; h < q.heads; ++h)
      detail::dispatch<T, S>(q.head(b, h), k.head(b, h / group), v.head(b, h / group), out.head(b, h),
                             lse.head(b, h).data, scale, detail::head_masks(options, b, h), options);
}

/// Every view of one element type T: `sdpa::attention<float>(q, k, v, out)` converts views of
/// mutable memory to the read-only views it takes.
template <class T>
void attention(const TensorView<const T>& q, const TensorView<const T>& k, const TensorView<const T>& v,
               const TensorView<T>& out, const Options& options = {}) {
  attention<T, T>(q, k, v, out, options);
}

SDPA_END_NAMESPACE
