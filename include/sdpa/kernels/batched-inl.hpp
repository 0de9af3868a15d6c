// sdpa/kernels/batched-inl.hpp - the tiled paths over a whole batch: every (batch, head,
// query tile) is one work item of one thread pool, and each key/value head is packed once.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

/// All heads' query tiles as one pool of work items, so that threads share batch x heads x
/// tiles; K (and V) of each key/value head are packed once, shared by its query heads.
template <class Micro, class Q>
void batched_tiled(const TensorView<const Q>& q, const TensorView<const typename Micro::Storage>& k,
                   const TensorView<const typename Micro::Storage>& v, const TensorView<Q>& out, double scale,
                   const Options& options) {
  using T = typename Micro::Vec::value_type;
  using S = typename Micro::Storage;
  const Index group = q.heads / k.heads;  // query heads per key/value head
  const BlockConfig blocks = choose_blocks(options.blocks, q.tokens, k.tokens, q.features, out.features, Index(sizeof(T)),
                                      Micro::key_multiple, Micro::row_multiple);
  const Index kv_heads = q.batch * k.heads;
  const Index packed_size = Micro::packed_size(k.head(0, 0), v.head(0, 0), blocks);
  const detail::ScratchLease<T, detail::Slot::Packed> packed(kv_heads * packed_size);

  std::vector<Micro> micros;  // one per (batch, kv head), packed in parallel
  micros.reserve(std::size_t(kv_heads));
  for (Index i = 0; i < kv_heads; ++i)
    micros.emplace_back(k.head(i / k.heads, i % k.heads), v.head(i / k.heads, i % k.heads), blocks,
                        packed.data() + i * packed_size);
  detail::parallel_for(kv_heads, options, [&](Index first, Index end) {
    for (Index i = first; i < end; ++i) {
      const MatrixView<const S> k_head = k.head(i / k.heads, i % k.heads), v_head = v.head(i / k.heads, i % k.heads);
      micros[std::size_t(i)].pack(k_head, v_head, 0, micros[std::size_t(i)].pack_tiles(k_head));
    }
  });

  std::vector<TiledHead<Micro>> heads;  // each keeps its own copy of its masks (views)
  heads.reserve(std::size_t(q.batch * q.heads));
  for (Index b = 0; b < q.batch; ++b)
    for (Index h = 0; h < q.heads; ++h)
      heads.emplace_back(q.head(b, h), k.head(b, h / group), v.head(b, h / group), out.head(b, h), nullptr, scale,
                         detail::head_masks(options, b, h), micros[std::size_t(b * k.heads + h / group)], blocks);
  const Index tiles = heads.front().tiles();
  detail::parallel_for(Index(heads.size()) * tiles, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) heads[std::size_t(item / tiles)].run_tile(item % tiles);
  });
}

/// Packed variable-length sequences: sequence b holds queries [offsets_q[b], offsets_q[b + 1])
/// and keys [offsets_k[b], offsets_k[b + 1]) of the [total tokens, heads, d] views (batch 1),
/// each attending only within itself with its own positions. Every (sequence, head, query
/// tile) is one work item of one pool, so threads share sequences of any lengths with no
/// padding; each (sequence, kv head) is packed once, and each sequence runs with the tile
/// sizes a call on it alone would choose.
template <class Micro, class Q>
void varlen_tiled(const TensorView<const Q>& q, const TensorView<const typename Micro::Storage>& k,
                  const TensorView<const typename Micro::Storage>& v, const TensorView<Q>& out,
                  const std::vector<Index>& offsets_q, const std::vector<Index>& offsets_k, double scale,
                  const Options& options) {
  using T = typename Micro::Vec::value_type;
  const Index sequences = Index(offsets_q.size()) - 1, group = q.heads / k.heads;
  const auto rows = [](const auto& view, Index first, Index count) { return view.middle_rows(first, count); };
  std::vector<BlockConfig> blocks;
  std::vector<Index> packed_at{0};  // where each (sequence, kv head)'s packing starts
  for (Index b = 0; b < sequences; ++b) {
    const Index nq = offsets_q[b + 1] - offsets_q[b], nk = offsets_k[b + 1] - offsets_k[b];
    blocks.push_back(choose_blocks(options.blocks, nq, nk, q.features, out.features, Index(sizeof(T)),
                                   Micro::key_multiple, Micro::row_multiple));
    for (Index h = 0; h < k.heads; ++h)
      packed_at.push_back(packed_at.back() + Micro::packed_size(rows(k.head(0, h), offsets_k[b], nk),
                                                                rows(v.head(0, h), offsets_k[b], nk), blocks.back()));
  }
  const detail::ScratchLease<T, detail::Slot::Packed> packed(packed_at.back());
  std::vector<Micro> micros;  // one per (sequence, kv head), packed in parallel
  micros.reserve(std::size_t(sequences * k.heads));
  const auto kv_of = [&](Index item) {  // (sequence, kv head) -> its K and V rows
    const Index b = item / k.heads, h = item % k.heads, nk = offsets_k[b + 1] - offsets_k[b];
    return std::pair(rows(k.head(0, h), offsets_k[b], nk), rows(v.head(0, h), offsets_k[b], nk));
  };
  for (Index item = 0; item < sequences * k.heads; ++item) {
    const auto [k_rows, v_rows] = kv_of(item);
    micros.emplace_back(k_rows, v_rows, blocks[std::size_t(item / k.heads)], packed.data() + packed_at[std::size_t(item)]);
  }
  detail::parallel_for(sequences * k.heads, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) {
      const auto [k_rows, v_rows] = kv_of(item);
      micros[std::size_t(item)].pack(k_rows, v_rows, 0, micros[std::size_t(item)].pack_tiles(k_rows));
    }
  });

  std::vector<TiledHead<Micro>> heads;  // one per (sequence, query head)
  std::vector<Index> first_item{0};           // work items before each head's tiles
  heads.reserve(std::size_t(sequences * q.heads));
  for (Index b = 0; b < sequences; ++b)
    for (Index h = 0; h < q.heads; ++h) {
      const Index nq = offsets_q[b + 1] - offsets_q[b];
      const auto [k_rows, v_rows] = kv_of(b * k.heads + h / group);
      heads.emplace_back(rows(q.head(0, h), offsets_q[b], nq), k_rows, v_rows, rows(out.head(0, h), offsets_q[b], nq),
                         nullptr, scale, detail::HeadMasks::of(options, h),
                         micros[std::size_t(b * k.heads + h / group)], blocks[std::size_t(b)]);
      first_item.push_back(first_item.back() + heads.back().tiles());
    }
  detail::parallel_for(first_item.back(), options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) {
      const std::size_t head = std::size_t(std::upper_bound(first_item.begin(), first_item.end(), item) - first_item.begin() - 1);
      heads[head].run_tile(item - first_item[head]);
    }
  });
}

/// Grouped-query decoding: the query heads that share a key/value head, with their few new
/// tokens each (one, or a speculative draft of up to kDecodeRows), become the rows of one
/// small Q in one query tile, so that the head's keys and values are read from memory once
/// per step for the whole group, whatever its size: each key tile is loaded once and serves
/// every row while it sits in L1. With one token the rows are the heads themselves (row stride =
/// head stride, no copy); with more they are gathered, row i tokens + t for token t of the
/// group's head i, each with its own position (causal prefix, window) and its head's ALiBi
/// slope and sink (HeadMasks::head_rows). Returns false when the call is not of
/// that form (then heads run separately).
template <class Q, class S>
bool decode_groups(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                   const TensorView<Q>& out, double scale, const Options& options) {
  using Rows = RowTiles<Arch, S>;
  const Index group = q.heads / k.heads, n = q.tokens, rows = group * n;
  const bool per_head_masks = (!options.batch_mask.empty() && options.batch_mask.heads != 1) ||
                              (!options.batch_bias.empty() && options.batch_bias.heads != 1);
  const bool query_masks = n > 1 && (!options.batch_mask.empty() || !options.batch_bias.empty());  // per token
  if (n > kDecodeRows || group < 2 || per_head_masks || query_masks || !Rows::fits_widths(q.features, out.features) ||
      !options.mask.empty() || !options.bias.empty() || !options.key_lengths.empty())
    return false;
  const Index dk = q.features, dv = out.features;
  const auto run = [&](Index item, const Options& run_options) {
    const Index b = item / k.heads, kv = item % k.heads;
    detail::HeadMasks masks = detail::head_masks(options, b, kv * group);  // per-head lists from head kv * group on
    masks.head_rows = n;  // row r: token r % n of head kv * group + r / n, with its own position
    Options tile = run_options;  // the whole group in one query tile: K and V are read once
    tile.blocks.query_rows = rows;
    const MatrixView<const S> k_head = k.head(b, kv), v_head = v.head(b, kv);
    if (n == 1) {
      const MatrixView<const Q> q_rows(q.head(b, kv * group).data, rows, dk, q.head_stride);
      const MatrixView<Q> out_rows(out.head(b, kv * group).data, rows, dv, out.head_stride);
      return tiled_attention<Rows>(q_rows, k_head, v_head, out_rows, nullptr, scale, masks, tile);
    }
    Q* q_rows = detail::thread_scratch<Q, detail::Slot::GroupQueries>(rows * dk);
    Q* out_rows = detail::thread_scratch<Q, detail::Slot::GroupOutputs>(rows * dv);
    for (Index r = 0; r < rows; ++r) {
      const Q* from = q.head(b, kv * group + r / n).row(r % n);
      std::copy(from, from + dk, q_rows + r * dk);
    }
    tiled_attention<Rows>(MatrixView<const Q>(q_rows, rows, dk, dk), k_head, v_head,
                          MatrixView<Q>(out_rows, rows, dv, dv), nullptr, scale, masks, tile);
    for (Index r = 0; r < rows; ++r)
      std::copy(out_rows + r * dv, out_rows + (r + 1) * dv, out.head(b, kv * group + r / n).row(r % n));
  };
  const Index items = q.batch * k.heads;
  if (items < 4) {  // few groups: each splits its keys across the threads
    for (Index item = 0; item < items; ++item) run(item, options);
    return true;
  }
  Options serial = options;  // groups are the parallel items; each runs on one thread
  serial.threads = 1;
  serial.parallel_for = nullptr;
  detail::parallel_for(items, options, [&](Index first, Index end) {
    for (Index item = first; item < end; ++item) run(item, serial);
  });
  return true;
}

// The Simd path's entries: which Micro runs a call. The decode microkernels (RowTiles) for a
// few query rows per head; otherwise the packed ones, on vdpbf16ps (Bf16Tiles) for bf16 Q, K
// and V where sdpa::bf16_dot_products() says so, in float (SimdTiles) for the rest.

/// out = softmax(scale Q K^T + mask) V with this target's vector microkernels, for float or
/// 16-bit storage (computed in float). Inputs already validated.
template <class Q, class S, class O>
void simd_attention(MatrixView<const Q> q, MatrixView<const S> k, MatrixView<const S> v, MatrixView<O> out,
                    double scale, const detail::HeadMasks& masks, const Options& options, float* lse = nullptr) {
  if (RowTiles<Arch, S>::fits(q.rows, q.cols, out.cols))
    return tiled_attention<RowTiles<Arch, S>>(q, k, v, out, lse, scale, masks, options);
  if constexpr (bf16_dot<Q, S>) {
    if (bf16_dot_products()) return tiled_attention<Bf16Tiles<Arch>>(q, k, v, out, lse, scale, masks, options);
  }
  tiled_attention<SimdTiles<Arch, S>>(q, k, v, out, lse, scale, masks, options);
}

/// The Simd path over a batch: grouped decoding when it applies, then as simd_attention.
template <class Q, class S>
void simd_batched(const TensorView<const Q>& q, const TensorView<const S>& k, const TensorView<const S>& v,
                  const TensorView<Q>& out, double scale, const Options& options) {
  if (decode_groups(q, k, v, out, scale, options)) return;
  if (RowTiles<Arch, S>::fits(q.tokens, q.features, out.features))
    return batched_tiled<RowTiles<Arch, S>>(q, k, v, out, scale, options);
  if constexpr (bf16_dot<Q, S>) {
    if (bf16_dot_products()) return batched_tiled<Bf16Tiles<Arch>>(q, k, v, out, scale, options);
  }
  batched_tiled<SimdTiles<Arch, S>>(q, k, v, out, scale, options);
}
