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
/// 32 KiB L1 data cache, since every query row of the tile streams through it; the query
/// tile with its scores and output accumulator (Bq * (d_k + Bk + d_v) elements) takes at
/// most 128 KiB of L2. Bk is rounded to `key_multiple` (the width of the score microkernel)
/// and Bq to `row_multiple` (its height). Bq shrinks for short sequences so that there are
/// at least 8 query tiles to share among threads.
inline Tiling choose_tiling(const BlockConfig& forced, Index nq, Index dk, Index dv, Index element_bytes,
                            Index key_multiple, Index row_multiple) {
  constexpr Index kL1Bytes = 32 * 1024;
  constexpr Index kL2ShareBytes = 128 * 1024;
  Index key_rows = forced.key_rows;
  if (key_rows == 0) {
    key_rows = kL1Bytes / ((dk + dv) * element_bytes) / key_multiple * key_multiple;
    key_rows = std::clamp<Index>(key_rows, key_multiple, std::max<Index>(key_multiple, 256));
  }
  Index query_rows = forced.query_rows;
  if (query_rows == 0) {
    query_rows = kL2ShareBytes / ((dk + round_up(key_rows, key_multiple) + dv) * element_bytes);
    query_rows = std::min(query_rows, round_up((nq + 7) / 8, row_multiple));
    query_rows = std::max(row_multiple, query_rows / row_multiple * row_multiple);
  }
  return {query_rows, key_rows};
}

}  // namespace sdpa::kernels
