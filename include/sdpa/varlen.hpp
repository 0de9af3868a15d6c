// sdpa/varlen.hpp - packed variable-length sequences: many sequences in one buffer, no padding.
/// \file
/// attention_varlen(): a batch of sequences of different lengths packed one after another in
/// [total tokens, heads, d] views, as FlashAttention's flash_attn_varlen_func takes them.
#pragma once

#include "batched.hpp"

#include <vector>

SDPA_BEGIN_NAMESPACE

namespace detail {

/// Offsets of sequences within `tokens` packed tokens: 0 first, never decreasing, `tokens` last.
inline void validate_offsets(const char* fn, const char* name, const std::vector<Index>& offsets, Index tokens,
                             const char* view) {
  if (offsets.empty() || offsets.front() != 0 || offsets.back() != tokens)
    fail(fn, name, " must start at 0 and end at ", view, "'s ", tokens, " tokens (it has ", offsets.size(),
         " entries", offsets.empty() ? "" : ", from " + std::to_string(offsets.front()) + " to " + std::to_string(offsets.back()),
         ")");
  for (std::size_t b = 1; b < offsets.size(); ++b)
    if (offsets[b] < offsets[b - 1])
      fail(fn, name, "[", b, "] is ", offsets[b], ", below ", name, "[", b - 1, "] = ", offsets[b - 1],
           ": offsets never decrease (sequence ", b - 1, " would have a negative length)");
}

}  // namespace detail

/// Attention over packed sequences: sequence b's queries are tokens [offsets_q[b],
/// offsets_q[b + 1]) of q and out, its keys and values tokens [offsets_k[b], offsets_k[b + 1])
/// of k and v (FlashAttention's cu_seqlens_q and cu_seqlens_k, B + 1 entries each). Each
/// sequence attends only within itself, with its own bottom-right causal alignment, window and
/// ALiBi positions, as a call on it alone (with the tile sizes that call would choose). The views have batch 1 and hold the packed tokens, in any layout
/// (TensorView::bnhd(data, 1, total, heads, d) for a [total, heads, d] buffer); heads may be
/// grouped as in attention(). Threads share the (sequence, head, query tile) items of every
/// sequence at once, so no time goes to padding.
///
///     std::vector<sdpa::Index> offsets = {0, 2048, 3448, 3960, 4088};  // lengths 2048, 1400, 512, 128
///     sdpa::attention_varlen(q, k, v, out, offsets, offsets, options);
///
/// Options: scale, causal, window, alibi_slopes, softcap, sinks (per query head), kernel,
/// blocks, threads, parallel_for. Masks indexed by position in a padded batch (mask, bias,
/// key_lengths, batch_mask, batch_bias, sequence_lengths) are rejected: the offsets say where
/// each sequence is.
template <class T, class S>
void attention_varlen(const TensorView<const T>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                      const TensorView<T>& out, const std::vector<Index>& offsets_q,
                      const std::vector<Index>& offsets_k, const Options& options = {}) {
  const char* fn = "attention_varlen";
  detail::check_storage<T, S>();
  sdpa::isa();  // first of all, the CPU check (isa.hpp): before code built for the wider ISA runs
  if (!options.mask.empty() || !options.bias.empty() || !options.key_lengths.empty() || !options.batch_mask.empty() ||
      !options.batch_bias.empty() || !options.sequence_lengths.empty())
    detail::fail(fn, "options.mask, bias, key_lengths, batch_mask, batch_bias and sequence_lengths index a padded ",
                 "batch; packed sequences take their extents from the offsets (use causal, window and the variants)");
  detail::validate_batched(q, k, v, out, options, fn);
  if (q.batch != 1)
    detail::fail(fn, "packed views hold every sequence's tokens in batch 1, but Q has batch ", q.batch,
                 ": view a [total tokens, heads, d] buffer as TensorView::bnhd(data, 1, total, heads, d)");
  detail::validate_offsets(fn, "offsets_q", offsets_q, q.tokens, "Q");
  detail::validate_offsets(fn, "offsets_k", offsets_k, k.tokens, "K");
  if (offsets_q.size() != offsets_k.size())
    detail::fail(fn, "offsets_q has ", offsets_q.size(), " entries and offsets_k ", offsets_k.size(),
                 ": both need one per sequence plus one");
  if (q.heads == 0) return;
  const double scale = detail::resolve_scale<compute_type<T>>(fn, options, q.features);
  const Kernel kernel = is_quantized<S> ? Kernel::Simd : detail::resolve_kernel<T>(options.kernel, q.tokens, k.tokens);
  if (kernel == Kernel::Reference) {
    if constexpr (!is_quantized<S>) {
      for (std::size_t b = 0; b + 1 < offsets_q.size(); ++b)
        for (Index h = 0; h < q.heads; ++h) {
          const Index nq = offsets_q[b + 1] - offsets_q[b], nk = offsets_k[b + 1] - offsets_k[b];
          const Index kv = h / (q.heads / k.heads);
          kernels::reference_attention(MatrixView<const T>(q.head(0, h)).middle_rows(offsets_q[b], nq),
                                       MatrixView<const S>(k.head(0, kv)).middle_rows(offsets_k[b], nk),
                                       MatrixView<const S>(v.head(0, kv)).middle_rows(offsets_k[b], nk),
                                       out.head(0, h).middle_rows(offsets_q[b], nq), scale,
                                       detail::HeadMasks::of(options, h), options);
        }
    }
    return;
  }
  if constexpr (std::is_same_v<compute_type<T>, float>) {
    if (kernel == Kernel::Simd)
      return kernels::with_target(sdpa::isa(), [&](auto target) {
        decltype(target)::varlen(q, k, v, out, offsets_q, offsets_k, scale, options, true);
      });
  }
  if constexpr (!is_quantized<S>) kernels::scalar::Target::varlen(q, k, v, out, offsets_q, offsets_k, scale, options, false);
}

/// Every view of one element type T: `sdpa::attention_varlen<float>(q, k, v, out, ...)`.
template <class T>
void attention_varlen(const TensorView<const T>& q, const TensorView<const T>& k, const TensorView<const T>& v,
                      const TensorView<T>& out, const std::vector<Index>& offsets_q,
                      const std::vector<Index>& offsets_k, const Options& options = {}) {
  attention_varlen<T, T>(q, k, v, out, offsets_q, offsets_k, options);
}

SDPA_END_NAMESPACE
