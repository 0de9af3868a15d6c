// tests/fuzz/masks.hpp - the masks of Options (causal, boolean mask, bias, key lengths): built
// from the input in every layout the views allow, handed to Options as views, and read back by
// the harness with its own index arithmetic to say which pairs are visible.
#pragma once

#include "byte_reader.hpp"
#include "call_options.hpp"
#include "finding.hpp"
#include "memory.hpp"
#include "oracle.hpp"
#include "values.hpp"

#include <sdpa/options.hpp>

#include <cmath>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace sdpa_fuzz {

/// A boolean mask: Nq x Nk or 1 x Nk at data[i * row_stride + j * col_stride].
struct BoolMask {
  std::unique_ptr<bool[]> data;
  std::size_t size = 0;
  Index rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  std::string layout;

  bool present() const { return data != nullptr; }
  bool at(Index i, Index j) const { return data[std::size_t((rows == 1 ? 0 : i) * row_stride + j * col_stride)]; }
  sdpa::MatrixView<const bool> view() const { return {data.get(), rows, cols, row_stride, col_stride}; }
};

/// An additive bias, float or double, in the same layouts as the mask.
struct BiasMatrix {
  std::vector<float> f;
  std::vector<double> d;
  bool is_double = false, present = false;
  Index rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  std::string layout;

  std::vector<Index> offsets() const { return matrix_offsets(rows, cols, row_stride, col_stride); }
  /// Element (i, j) in its own type, widened (exact); row 0 for every i when 1 x Nk.
  Wide at(Index i, Index j) const {
    const std::size_t o = std::size_t((rows == 1 ? 0 : i) * row_stride + j * col_stride);
    return is_double ? Wide(d[o]) : Wide(f[o]);
  }
  sdpa::Bias bias() const {
    if (!present) return {};
    if (is_double) return sdpa::Bias(sdpa::MatrixView<const double>(d.data(), rows, cols, row_stride, col_stride));
    return sdpa::Bias(sdpa::MatrixView<const float>(f.data(), rows, cols, row_stride, col_stride));
  }
  void* storage() { return is_double ? static_cast<void*>(d.data()) : static_cast<void*>(f.data()); }
};

/// The masks every head of a call shares (a 2-D call's, or the 2-D options of a batched one).
struct Masks {
  bool causal = false;
  BoolMask mask;
  BiasMatrix bias;
  std::vector<Index> key_lengths;

  void apply(sdpa::Options& o) const {
    o.causal = causal;
    if (mask.present()) o.mask = mask.view();
    o.bias = bias.bias();
    o.key_lengths = key_lengths;
  }

  /// The harness's own rule: pair (i, j) of an Nq x Nk head is visible unless causal
  /// (bottom-right aligned: j <= i + Nk - Nq), a key length, the mask or a bias of exactly -inf
  /// forbids it. (The shapes are those of a valid call.)
  bool visible(Index i, Index j, Index nq, Index nk) const {
    if (causal && j > i + nk - nq) return false;
    if (!key_lengths.empty() && j >= key_lengths[key_lengths.size() == 1 ? 0 : std::size_t(i)]) return false;
    if (mask.present() && !mask.at(i, j)) return false;
    if (bias.present && bias.at(i, j) == -std::numeric_limits<Wide>::infinity()) return false;
    return true;
  }

  std::string describe() const {
    std::string s = causal ? "causal" : "not causal";
    if (mask.present()) s += ", mask " + mask.layout;
    if (bias.present) s += std::string(", ") + (bias.is_double ? "double" : "float") + " bias " + bias.layout;
    if (!key_lengths.empty()) {
      s += ", key_lengths {";
      for (std::size_t i = 0; i < key_lengths.size() && i < 8; ++i) s += (i ? "," : "") + std::to_string(key_lengths[i]);
      s += key_lengths.size() > 8 ? ",...}" : "}";
    }
    return s;
  }
};

/// Mask layouts (field kMask): 0 none, 1 Nq x Nk row-major, 2 1 x Nk, 3 Nq x Nk column-major,
/// 4 Nq x Nk by row stride 0 (one row repeated), 5 Nq x Nk with padded rows.
inline BoolMask make_mask(int layout, Index nq, Index nk, Index pad, double p_true, Random& random) {
  BoolMask m;
  if (layout == 0) return m;
  m.cols = nk;
  m.rows = layout == 2 ? 1 : nq;
  switch (layout) {
    case 2: m.row_stride = nk; m.layout = "1xNk"; break;
    case 3: m.row_stride = 1; m.col_stride = std::max<Index>(nq, 1); m.layout = "NqxNk column-major"; break;
    case 4: m.row_stride = 0; m.layout = "NqxNk row stride 0"; break;
    case 5: m.row_stride = nk + pad; m.layout = "NqxNk padded rows"; break;
    default: m.row_stride = nk; m.layout = "NqxNk"; break;
  }
  Index footprint = 0;
  for (const Index o : matrix_offsets(m.rows, m.cols, m.row_stride, m.col_stride)) footprint = std::max(footprint, o + 1);
  m.size = std::size_t(std::max<Index>(footprint, 1));
  m.data.reset(new bool[m.size]);
  for (std::size_t o = 0; o < m.size; ++o) m.data[o] = random.chance(p_true);
  return m;
}

/// One bias entry: uniform [-3, 3], or with probability (specials & 3: 0, 0.1, 0.3, 0.7) a
/// special one of the kinds the other bits allow (none set: -inf only): -inf, NaN, +inf,
/// +-3e38, +-1e30, and +-1e300 for a double bias (which overflows float).
inline double bias_entry(std::uint8_t specials, bool is_double, Random& random) {
  static constexpr double kRates[] = {0.0, 0.1, 0.3, 0.7};
  const int kinds = (specials >> 2) == 0 ? 1 : specials >> 2;
  // SDPA_FUZZ_IGNORE=gen.bias_nan_inf: NaN and +inf become -inf, 1e300 becomes 3e38 (the same
  // draws, so an input decodes to the same case either way, but for those entries).
  const bool no_nan_inf = ignored("gen.bias_nan_inf");
  double x = random.uniform(-3, 3);
  if (!random.chance(kRates[specials & 3])) return x;
  const double sign = random.chance(0.5) ? 1.0 : -1.0;
  for (int attempt = 0; attempt < 8; ++attempt) {
    const int kind = int(random.below(6));
    if (!(kinds >> kind & 1)) continue;
    switch (kind) {
      case 0: return -std::numeric_limits<double>::infinity();
      case 1: return no_nan_inf ? -std::numeric_limits<double>::infinity() : std::numeric_limits<double>::quiet_NaN();
      case 2: return (no_nan_inf ? -1 : 1) * std::numeric_limits<double>::infinity();
      case 3: return sign * 3e38;
      case 4: return sign * 1e30;
      default: return is_double && !no_nan_inf ? sign * 1e300 : sign * 3e38;  // 1e300: +-inf as float
    }
  }
  return x;
}

/// Bias layouts (field kBias): 0 none, 1 float Nq x Nk, 2 float 1 x Nk, 3 double Nq x Nk,
/// 4 double 1 x Nk, 5 float Nq x Nk column-major, 6 float Nq x Nk by row stride 0.
inline BiasMatrix make_bias(int layout, Index nq, Index nk, std::uint8_t specials, Random& random) {
  BiasMatrix b;
  if (layout == 0) return b;
  b.present = true;
  b.is_double = layout == 3 || layout == 4;
  b.cols = nk;
  b.rows = layout == 2 || layout == 4 ? 1 : nq;
  switch (layout) {
    case 5: b.row_stride = 1; b.col_stride = std::max<Index>(nq, 1); b.layout = "NqxNk column-major"; break;
    case 6: b.row_stride = 0; b.layout = "NqxNk row stride 0"; break;
    default: b.row_stride = nk; b.layout = b.rows == 1 ? "1xNk" : "NqxNk"; break;
  }
  Index footprint = 0;
  for (const Index o : b.offsets()) footprint = std::max(footprint, o + 1);
  std::vector<double> values(std::size_t(std::max<Index>(footprint, 1)));
  for (double& x : values) x = bias_entry(specials, b.is_double, random);
  if (b.is_double)
    b.d = values;
  else
    b.f.assign(values.begin(), values.end());
  return b;
}

/// Key lengths (field kKeyLengths): 0 none, 1 one length for every row, 2 one per row.
inline std::vector<Index> make_key_lengths(int kind, std::uint8_t value, Index nq, Index nk, Random& random) {
  if (kind == 1) return {Index(value) % (nk + 1)};
  if (kind != 2) return {};
  std::vector<Index> lengths(static_cast<std::size_t>(nq));
  for (Index& l : lengths) l = random.below(nk + 1);
  return lengths;
}

/// The masks of a 2-D call, from the input.
inline Masks make_masks(const ByteReader& in, Index nq, Index nk, Random& random) {
  Masks m;
  m.causal = in.flag(kCausal);
  const Index pad = in.range(kPadding, 1, 5);
  m.mask = make_mask(in.pick(kMask, 6), nq, nk, pad, 1.0 - in.fraction(kMaskDensity), random);
  m.bias = make_bias(in.pick(kBias, 7), nq, nk, in.byte(kBiasSpecials), random);
  m.key_lengths = make_key_lengths(in.pick(kKeyLengths, 3), in.byte(kKeyLengthsValue), nq, nk, random);
  return m;
}

/// Fills the masks part of a head problem: visibility and the bias as T holds it.
template <class T>
void describe_masks(HeadProblem<T>& p, const Masks& masks) {
  const Index nq = p.nq(), nk = p.nk();
  p.reset_masks();
  for (Index i = 0; i < nq; ++i)
    for (Index j = 0; j < nk; ++j) {
      const std::size_t ij = std::size_t(i * nk + j);
      p.visible[ij] = masks.visible(i, j, nq, nk);
      if (masks.bias.present) {
        const Wide b = masks.bias.at(i, j);
        p.bias[ij] = Wide(T(b));
        p.bias_overflows[ij] = std::isfinite(b) && !std::isfinite(T(b));
      }
    }
}

/// The problem one 2-D call poses to the oracle: Q, K, V as strided views (any operands with
/// `strided()`), the scale the call uses and its masks.
template <class T, class Operand>
HeadProblem<T> head_problem(const Operand& Q, const Operand& K, const Operand& V, const std::optional<double>& scale,
                            Index dk, const Masks& masks) {
  HeadProblem<T> problem;
  problem.q = Q.strided();
  problem.k = K.strided();
  problem.v = V.strided();
  problem.scale = scale.value_or(1.0 / std::sqrt(double(dk)));
  problem.tame_scale = tame_scale(scale);
  describe_masks(problem, masks);
  return problem;
}

/// Registers Q, K, V and the masks as memory no call may change.
template <class Operand>
void watch_inputs(Memory& memory, const Operand& Q, const Operand& K, const Operand& V, const Masks& masks) {
  memory.add("Q", Q.storage);
  memory.add("K", K.storage);
  memory.add("V", V.storage);
  memory.add("options.mask", masks.mask.data.get(), masks.mask.size);
  memory.add("options.bias", masks.bias.f);
  memory.add("options.bias", masks.bias.d);
}

}  // namespace sdpa_fuzz
