// sdpa/kernels/batched-inl.hpp - the tiled paths over a whole batch: every (batch, head,
// query tile) is one work item of one thread pool, and each key/value head is packed once.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only.

/// All heads' query tiles as one pool of work items, so that threads share batch x heads x
/// tiles; K (and V) of each key/value head are packed once, shared by its query heads.
template <class Micro, class T>
void batched_tiled(const TensorView<const T>& q, const TensorView<const T>& k, const TensorView<const T>& v,
                   const TensorView<T>& out, double scale, const Options& options) {
  const Index group = q.heads / k.heads;  // query heads per key/value head
  const BlockConfig blocks = choose_blocks(options.blocks, q.tokens, k.tokens, q.features, v.features, Index(sizeof(T)),
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
      const MatrixView<const T> k_head = k.head(i / k.heads, i % k.heads), v_head = v.head(i / k.heads, i % k.heads);
      micros[std::size_t(i)].pack(k_head, v_head, 0, micros[std::size_t(i)].pack_tiles(k_head));
    }
  });

  std::vector<TiledHead<Micro, T>> heads;  // each keeps its own copy of its masks (views)
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

/// Grouped-query decoding: with one query per head, the query heads that share a key/value
/// head are the rows of one small Q (row stride = head stride), so that head's keys and
/// values are read once for the group instead of once per query head. Returns false when
/// the call is not of that form (then heads run separately).
inline bool decode_groups(const TensorView<const float>& q, const TensorView<const float>& k,
                          const TensorView<const float>& v, const TensorView<float>& out, double scale,
                          const Options& options) {
  using Rows = RowTiles<Arch>;
  const Index group = q.heads / k.heads;
  const bool per_head_masks = (!options.batch_mask.empty() && options.batch_mask.heads != 1) ||
                              (!options.batch_bias.empty() && options.batch_bias.heads != 1);
  if (q.tokens != 1 || group < 2 || group > Rows::max_rows || per_head_masks ||
      !Rows::fits(group, q.features, v.features) || !options.mask.empty() || !options.bias.empty() ||
      !options.key_lengths.empty())
    return false;
  const auto run = [&](Index item, const Options& run_options) {
    const Index b = item / k.heads, kv = item % k.heads;
    const MatrixView<const float> q_rows(q.head(b, kv * group).data, group, q.features, q.head_stride);
    const MatrixView<float> out_rows(out.head(b, kv * group).data, group, out.features, out.head_stride);
    detail::HeadMasks masks = detail::head_masks(options, b, kv * group);
    masks.causal = false;  // one query per head sees every key; as rows of a group it must too
    simd_attention(q_rows, k.head(b, kv), v.head(b, kv), out_rows, scale, masks, run_options);
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

/// The Simd path over a batch: grouped decoding when it applies, the decode microkernels for
/// a few queries per head, the packed ones otherwise.
inline void simd_batched(const TensorView<const float>& q, const TensorView<const float>& k,
                         const TensorView<const float>& v, const TensorView<float>& out, double scale,
                         const Options& options) {
  if (decode_groups(q, k, v, out, scale, options)) return;
  if (RowTiles<Arch>::fits(q.tokens, q.features, v.features))
    return batched_tiled<RowTiles<Arch>>(q, k, v, out, scale, options);
  batched_tiled<SimdTiles<Arch>>(q, k, v, out, scale, options);
}
