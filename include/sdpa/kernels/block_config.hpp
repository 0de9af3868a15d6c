// sdpa/kernels/block_config.hpp - tile sizes of the tiled kernels, from the cache sizes, and
// the other shape thresholds the kernels and Kernel::Auto share.
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#include <Eigen/Core>

#include <algorithm>

SDPA_BEGIN_NAMESPACE
namespace kernels {

inline constexpr Index round_up(Index value, Index multiple) { return (value + multiple - 1) / multiple * multiple; }

/// Up to this many query rows, the Simd path reads K and V in place (its decode microkernels,
/// RowTiles) instead of packing K: Kernel::Auto and the kernels both ask this constant.
inline constexpr Index kDecodeRows = 4;

/// The L1 data cache per core as the OS reports it (Eigen asks cpuid or sysconf), or 32 KiB
/// where it reports nothing.
inline Index l1_data_cache_bytes() {
  static const Index bytes = [] {
    const Index reported = Index(Eigen::internal::queryL1CacheSize());
    return reported >= 4096 ? reported : Index(32 * 1024);
  }();
  return bytes;
}

/// The tile sizes a call runs with: `forced`'s (options.blocks) where positive, these defaults
/// elsewhere. Results do not depend on query_rows (each query row is computed the same way
/// whichever tile holds it); they do depend on key_rows, which fixes the order in which key
/// tiles are folded into the online softmax.
///
/// Defaults: the key tile (Bk keys of K and of V, Bk * (d_k + d_v) elements) fits in the L1
/// data cache, since every query row of the tile streams through it, rounded to
/// `key_multiple` (the width of the score microkernel, which then also fuses the softmax).
/// The query tile is 8 microkernel heights (`row_multiple`): each key tile fetched from L2 serves
/// that many row blocks, while on a causal diagonal the computed-then-masked triangle, which
/// grows as Bq^2, stays near 5% of the work at N = 2048 (measured: Bq = 48 runs causal 5%
/// faster than Bq = 168 and non-causal as fast). Bq shrinks for short sequences so that
/// there are at least 8 query tiles to share among threads.
inline BlockConfig choose_blocks(const BlockConfig& forced, Index nq, Index nk, Index dk, Index dv, Index element_bytes,
                            Index key_multiple, Index row_multiple, Index l1_bytes = l1_data_cache_bytes()) {
  Index key_rows = forced.key_rows;
  if (key_rows == 0) {
    key_rows = l1_bytes / ((dk + dv) * element_bytes) / key_multiple * key_multiple;
    key_rows = std::clamp<Index>(key_rows, key_multiple, std::max<Index>(key_multiple, 256));
  }
  Index query_rows = forced.query_rows;
  if (query_rows == 0) {
    query_rows = std::min(8 * row_multiple, round_up((nq + 7) / 8, row_multiple));
    query_rows = std::max(row_multiple, query_rows);
  }
  // A tile larger than the sequence only costs scratch (and padding in the packed K).
  return {std::max<Index>(1, std::min(query_rows, nq)), std::max<Index>(1, std::min(key_rows, nk))};
}

/// Keys per piece of a split call. A query tile is one thread's work; with too few of them
/// (decoding: one query) the keys are split instead, each piece giving a partial output and
/// LSE, merged in order afterwards (flash-decoding). The split depends on Nk only, never on
/// the thread count, so results stay bit-identical whatever the threads.
inline constexpr Index kSplitKeys = 512;

inline Index key_pieces(Index query_tiles, Index nk) {
  if (query_tiles > 2 || nk < 2 * kSplitKeys) return 1;
  return std::min<Index>(64, nk / kSplitKeys);
}

}  // namespace kernels
SDPA_END_NAMESPACE
