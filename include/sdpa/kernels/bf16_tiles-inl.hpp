// sdpa/kernels/bf16_tiles-inl.hpp - Kernel::Simd's microkernels for bf16 Q, K and V on CPUs with
// AVX512-BF16, where both products run on vdpbf16ps (sdpa::bf16_dot_products()).
//
// vdpbf16ps(acc, a, b) adds a[2i] b[2i] + a[2i+1] b[2i+1] into float lane i: 32 multiply-adds
// per instruction against 16 for a float FMA, at the same rate (measured on Zen 4). The
// products of two bf16 values are exact in float, so what is left is float accumulation,
// with denormal inputs and results flushed to zero (at most 2^-126 per product). Each operand
// holds pairs along its product's reduction:
//   S = Q K^T   pairs of features: K is packed into K^T panels of (d_k / 2, Bk) pairs, and a
//               query's pair (q_e, q_e+1) is broadcast;
//   acc += P V  pairs of keys: V is packed as (keys / 2, d_v) pairs, and a row's two weights
//               (p_j, p_j+1) are broadcast. The weights are rounded to bf16 for this, as in
//               PyTorch's and oneDNN's bf16 attention: at most 2^-8 sum_j p_j |v_j| more error in
//               an output (README, "Half precision").
// The queries are converted once per query tile and unscaled (Q is read exactly); the scale
// multiplies the float scores. The softmax between the products is the float one, fused into
// the score microkernel for whole key tiles as on the float path.
//
// A per-target file (see simd/exp-inl.hpp): included by kernels/targets.hpp only, and compiled
// only in the AVX-512 target (SDPA_IN_AVX512_TARGET), inside attributes that add AVX512-BF16 to
// it; its kernels run only where the CPU has AVX512-BF16 (sdpa::bf16_dot_products()).

#if defined(SDPA_IN_AVX512_TARGET)
// Clang applies only the outermost target attribute of nested pushes: the AVX-512 target's own
// (dispatch mode) is closed here and reopened at the end.
#if defined(__clang__) && !SDPA_BUILD_AVX512
SDPA_TARGET_END
#endif
SDPA_TARGET_BEGIN(SDPA_FEATURES_AVX512 ",avx512bf16")

/// Whether a call of Q and K/V storage types may take the vdpbf16ps microkernels in this target.
template <class Q, class S>
inline constexpr bool bf16_dot = std::is_same_v<Q, Eigen::bfloat16> && std::is_same_v<S, Eigen::bfloat16>;

namespace bf16_microkernels {

using V = simd::Vec<float, simd::avx512>;
using Pair = std::uint32_t;  // two bf16 values, the first in the low half (how vdpbf16ps reads them)

SDPA_ALWAYS_INLINE Pair pair(std::uint32_t low, std::uint32_t high) { return low | high << 16; }
SDPA_ALWAYS_INLINE V dot_pairs(V acc, __m512i a, Pair b) {
  return {_mm512_dpbf16_ps(acc.v, (__m512bh)a, (__m512bh)_mm512_set1_epi32(int(b)))};
}

// s (R, C W) = scale q (R, pairs) kt (pairs, C W): q's rows at q_ld pairs, kt a K^T panel.
template <int R, int C>
SDPA_ALWAYS_INLINE void score_registers(const Pair* q, Index q_ld, Index pairs, const Pair* kt, Index kt_ld, float scale,
                                        V (&s)[R][C]) {
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) s[r][c] = V::zero();
  for (Index e = 0; e < pairs; ++e) {
    __m512i loaded[C];
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) loaded[c] = _mm512_loadu_si512(kt + e * kt_ld + c * V::width);
    SDPA_UNROLL
    for (int r = 0; r < R; ++r)
      SDPA_UNROLL
      for (int c = 0; c < C; ++c) s[r][c] = dot_pairs(s[r][c], loaded[c], q[r * q_ld + e]);
  }
  const V factor = V::broadcast(scale);
  SDPA_UNROLL
  for (int r = 0; r < R; ++r)
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) s[r][c] = s[r][c] * factor;
}

// acc (R, C W) = rescale * acc + p (R, key pairs) v (key pairs, features [col, col + C W)).
template <int R, int C>
SDPA_ALWAYS_INLINE void value_block(const Pair* p, Index p_ld, Index key_pairs, const Pair* v, Index v_ld, Index col,
                                    const float* rescale, float* acc, Index acc_ld) {
  V out[R][C];
  microkernels::load_rescaled(acc, acc_ld, rescale, out);
  for (Index j = 0; j < key_pairs; ++j) {
    __m512i loaded[C];
    SDPA_UNROLL
    for (int c = 0; c < C; ++c) loaded[c] = _mm512_loadu_si512(v + j * v_ld + col + c * V::width);
    SDPA_UNROLL
    for (int r = 0; r < R; ++r)
      SDPA_UNROLL
      for (int c = 0; c < C; ++c) out[r][c] = dot_pairs(out[r][c], loaded[c], p[r * p_ld + j]);
  }
  microkernels::store_block(out, acc, acc_ld);
}

/// n floats (a multiple of 32) rounded to bf16, to nearest even, as n / 2 pairs.
SDPA_ALWAYS_INLINE void round_to_pairs(const float* x, Index n, Pair* to) {
  for (Index i = 0; i < n; i += 2 * V::width) {
    const __m512bh rounded = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + V::width), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(to + i / 2, (__m512i)rounded);
  }
}

}  // namespace bf16_microkernels

/// The Micro (tiled_loop-inl.hpp) of bf16_dot calls: K^T panels and V in bf16 pairs, packed
/// once per call (half the bytes of SimdTiles' float copies), and the query tile as pairs.
template <class Arch>
class Bf16Tiles {
 public:
  using Vec = simd::Vec<float, Arch>;
  using Storage = Eigen::bfloat16;
  using KeyView = MatrixView<const Eigen::bfloat16>;
  using Pair = bf16_microkernels::Pair;
  static constexpr int W = Vec::width;
  static constexpr int R = RegisterBlock<Arch>::rows;
  static constexpr int C = RegisterBlock<Arch>::vectors;
  static constexpr Index key_multiple = C * W;
  static constexpr Index row_multiple = R;

  /// The query tile as the score microkernels read it (prepare_queries): `ld` pairs per row.
  struct Queries {
    const Pair* pairs;
    Index ld;
    float scale;
  };

  static Index pairs(Index n) { return (n + 1) / 2; }

  /// Floats (each the size of a pair) of packing buffer: K^T panels (tiles, d_k / 2, padded Bk)
  /// and V (tiles, Bk / 2, d_v padded), each rounded up to whole pairs with zeros.
  static Index packed_size(const KeyView& k, const KeyView& v, const BlockConfig& blocks) {
    const Index tiles = (k.rows + blocks.key_rows - 1) / blocks.key_rows;
    return tiles * (pairs(k.cols) * round_up(blocks.key_rows, key_multiple) + pairs(blocks.key_rows) * round_up(v.cols, W));
  }

  Bf16Tiles(const KeyView& k, const KeyView& v, const BlockConfig& blocks, float* packed)
      : dk_(k.cols), dv_(v.cols), key_pairs_(pairs(k.cols)), key_rows_(blocks.key_rows),
        panel_ld_(round_up(blocks.key_rows, key_multiple)), acc_ld_(round_up(v.cols, W)),
        packed_k_(reinterpret_cast<Pair*>(packed)),
        packed_v_(packed_k_ + pack_tiles(k) * key_pairs_ * panel_ld_) {}

  Index pack_tiles(const KeyView& k) const { return (k.rows + key_rows_ - 1) / key_rows_; }

  /// Key tiles [first, end) of K and V, as pairs (zeros past the keys and features). Rows are
  /// prefetched a few ahead: K and V are read once per call, mostly from DRAM, row by row.
  void pack(const KeyView& k, const KeyView& v, Index first, Index end) const {
    constexpr Index kAhead = 8;
    for (Index t = first; t < end; ++t) {
      const Index j0 = t * key_rows_, keys = std::min(key_rows_, k.rows - j0);
      Pair* panel = packed_k_ + t * key_pairs_ * panel_ld_;
      for (Index e = 0; e < key_pairs_; ++e) std::fill(panel + e * panel_ld_ + keys, panel + (e + 1) * panel_ld_, Pair(0));
      for (Index c = 0; c < keys; ++c) {
        if (c + kAhead < keys) prefetch_row(k.row(j0 + c + kAhead), dk_);
        const std::uint16_t* row = halves(k.row(j0 + c));
        for (Index e = 0; e < dk_ / 2; ++e) panel[e * panel_ld_ + c] = row[2 * e] | Pair(row[2 * e + 1]) << 16;
        if (dk_ % 2) panel[(key_pairs_ - 1) * panel_ld_ + c] = row[dk_ - 1];
      }
      Pair* values = packed_v_ + t * pairs(key_rows_) * acc_ld_;
      for (Index j = 0; j < pairs(keys); ++j) {
        if (2 * (j + kAhead) + 1 < keys)
          prefetch_row(v.row(j0 + 2 * (j + kAhead)), dv_), prefetch_row(v.row(j0 + 2 * (j + kAhead) + 1), dv_);
        Pair* to = values + j * acc_ld_;
        const std::uint16_t* low = halves(v.row(j0 + 2 * j));
        if (2 * j + 1 < keys) {
          const std::uint16_t* high = halves(v.row(j0 + 2 * j + 1));
          for (Index f = 0; f < dv_; ++f) to[f] = low[f] | Pair(high[f]) << 16;
        } else {
          for (Index f = 0; f < dv_; ++f) to[f] = low[f];
        }
        std::fill(to + dv_, to + acc_ld_, Pair(0));
      }
    }
  }

  Index accumulator_cols() const { return acc_ld_; }
  Vec exp2(Vec x) const { return exp2_no_overflow(x); }

  /// The tile's queries (rows of d_k floats, each exactly a bf16 value: read unscaled) as pairs
  /// in this thread's scratch, with the scale the scores are multiplied by.
  Queries prepare_queries(const float* q_tile, Index rows, float scale) const {
    Pair* to = detail::thread_scratch<Pair, detail::Slot::QueryPairs>(rows * key_pairs_);
    for (Index r = 0; r < rows; ++r)
      for (Index e = 0; e < key_pairs_; ++e) {
        const float* q = q_tile + r * dk_ + 2 * e;
        to[r * key_pairs_ + e] = bf16_microkernels::pair(bits_of(q[0]), 2 * e + 1 < dk_ ? bits_of(q[1]) : 0);
      }
    return {to, key_pairs_, scale};
  }

  void scores(const Queries& q, Index rows, Index j0, Index keys, float* s, Index ld) const {
    const Pair* panel = packed_k_ + (j0 / key_rows_) * key_pairs_ * panel_ld_;
    for (Index col = 0; col < keys; col += key_multiple)
      for (Index r0 = 0; r0 < rows; r0 += R)
        microkernels::with_rows<R>(rows - r0, [&](auto height) {
          constexpr int H = decltype(height)::value;
          Vec acc[H][C];
          bf16_microkernels::score_registers<H, C>(q.pairs + r0 * q.ld, q.ld, key_pairs_, panel + col, panel_ld_,
                                                   q.scale, acc);
          microkernels::store_block(acc, s + r0 * ld + col, ld);
        });
  }

  /// As SimdTiles::fused_softmax: a tile of exactly one microkernel's width.
  template <class Change>
  bool fused_softmax(const Queries& q, Index rows, Index j0, Index keys, float* p, Index ld,
                     OnlineSoftmaxRow<Vec>* states, float* rescale, const Change& change) const {
    if (keys != key_multiple || ld != key_multiple) return false;
    const Pair* panel = packed_k_ + (j0 / key_rows_) * key_pairs_ * panel_ld_;
    for (Index r0 = 0; r0 < rows; r0 += R)
      microkernels::with_rows<R>(rows - r0, [&](auto height) {
        constexpr int H = decltype(height)::value;
        Vec s[H][C];
        bf16_microkernels::score_registers<H, C>(q.pairs + r0 * q.ld, q.ld, key_pairs_, panel, panel_ld_, q.scale, s);
        microkernels::softmax_registers<Vec, H, C>(s, p + r0 * ld, ld, states + r0, rescale + r0,
                                                   [&](int r, int c, Vec x) { return change(r0 + r, Index(c) * W, x); });
      });
    return true;
  }

  /// The weights (rows of `ld` floats, zero past `keys`) rounded to bf16 pairs, then P V.
  void accumulate(const float* p, Index rows, Index ld, Index j0, Index keys, const float* rescale, float* acc) const {
    const Index key_pairs = pairs(keys), p_ld = ld / 2;  // ld: a multiple of key_multiple
    Pair* weights = detail::thread_scratch<Pair, detail::Slot::WeightPairs>(rows * p_ld);
    for (Index r = 0; r < rows; ++r) bf16_microkernels::round_to_pairs(p + r * ld, round_up(keys, 2 * W), weights + r * p_ld);
    const Pair* values = packed_v_ + (j0 / key_rows_) * pairs(key_rows_) * acc_ld_;
    const auto columns = [&](Index col, auto width) {
      for (Index r0 = 0; r0 < rows; r0 += R)
        microkernels::with_rows<R>(rows - r0, [&](auto height) {
          bf16_microkernels::value_block<decltype(height)::value, decltype(width)::value>(
              weights + r0 * p_ld, p_ld, key_pairs, values, acc_ld_, col, rescale + r0, acc + r0 * acc_ld_ + col, acc_ld_);
        });
    };
    const Index vectors = acc_ld_ / W;
    Index vec = 0;
    for (; vec + C <= vectors; vec += C) columns(vec * W, std::integral_constant<int, C>{});
    for (; vec < vectors; ++vec) columns(vec * W, std::integral_constant<int, 1>{});
  }

 private:
  /// A bf16 row's bits (Eigen::bfloat16 is a struct holding them, as its bit_cast reads it).
  static const std::uint16_t* halves(const Eigen::bfloat16* row) { return reinterpret_cast<const std::uint16_t*>(row); }
  static void prefetch_row(const Eigen::bfloat16* row, Index n) {
    prefetch_bytes(reinterpret_cast<const char*>(row), n * Index(sizeof(Eigen::bfloat16)));
  }
  static std::uint32_t bits_of(float x) { return Eigen::numext::bit_cast<std::uint32_t>(x) >> 16; }  // x: a bf16 value

  Index dk_, dv_, key_pairs_, key_rows_, panel_ld_, acc_ld_;
  Pair* packed_k_;  // in the float buffer tiled_attention leases: same size, written and read as pairs only
  Pair* packed_v_;
};

SDPA_TARGET_END
#if defined(__clang__) && !SDPA_BUILD_AVX512
SDPA_TARGET_BEGIN(SDPA_FEATURES_AVX512)
#endif
#else  // not the AVX-512 target: the names, for code that if-constexprs them away
template <class Q, class S>
inline constexpr bool bf16_dot = false;
template <class Arch>
class Bf16Tiles;
#endif
