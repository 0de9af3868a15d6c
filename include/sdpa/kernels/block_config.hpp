// sdpa/kernels/block_config.hpp - tile sizes of the tiled kernels, from the cache sizes.
#pragma once

#include "../options.hpp"

#include <algorithm>

namespace sdpa::kernels {

/// Tile sizes one call runs with. Results do not depend on query_rows (each query row is
/// computed the same way whichever tile holds it); they do depend on key_rows, which fixes
/// the order in which key tiles are folded into the online softmax.
struct Tiling {
  Index query_rows;  // Bq
  Index key_rows;    // Bk
};

inline constexpr Index round_up(Index value, Index multiple) { return (value + multiple - 1) / multiple * multiple; }

/// Defaults: the key tile (Bk keys of K and of V, Bk * (d_k + d_v) elements) fits in a
/// 32 KiB L1 data cache, since every query row of the tile streams through it, rounded to
/// `key_multiple` (the width of the score microkernel, which then also fuses the softmax).
/// The query tile is 8 microkernel heights (`row_multiple`): each key tile fetched from L2 serves
/// that many row blocks, while on a causal diagonal the computed-then-masked triangle, which
/// grows as Bq^2, stays near 5% of the work at N = 2048 (measured: Bq = 48 runs causal 5%
/// faster than Bq = 168 and non-causal as fast). Bq shrinks for short sequences so that
/// there are at least 8 query tiles to share among threads.
inline Tiling choose_tiling(const BlockConfig& forced, Index nq, Index nk, Index dk, Index dv, Index element_bytes,
                            Index key_multiple, Index row_multiple) {
  constexpr Index kL1Bytes = 32 * 1024;
  Index key_rows = forced.key_rows;
  if (key_rows == 0) {
    key_rows = kL1Bytes / ((dk + dv) * element_bytes) / key_multiple * key_multiple;
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

}  // namespace sdpa::kernels
