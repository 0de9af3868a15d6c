// tests/fuzz/oracle.hpp - what the contract says one head's attention gives, computed without
// the library (long double, which is at least double): for each query row, the values where
// the data are tame enough for a tolerance to mean something, and on any data the class
// (NaN / +inf / -inf / finite) of every output and of the LSE, except where the element type's
// rounding may legitimately decide it.
//
// The contract (sdpa's docs/design.md, as being implemented):
//   2. a key a query may not see (bool mask false, causal, key/sequence lengths, bias exactly
//      -inf) is never seen: its K and V rows may hold anything, NaN included;
//   3. a visible score s_ij = scale (q_i . k_j) + bias_ij that is NaN or +inf makes the row's
//      outputs and LSE NaN; a visible score of -inf weighs 0;
//   4. keys of weight exactly 0 (masked, or exp underflow) contribute nothing whatever V holds;
//      keys of positive weight contribute p v, so NaN / Inf in their V reaches the output;
//   5. a row with no visible key (or only -inf scores) is exactly 0 with LSE -inf.
//
// Where the element type's rounding decides, a class is left unchecked:
//   * a visible pair whose dot product can overflow T: sum_e |scale q_e k_e| or sum_e
//     |q_e k_e| above 1e37 for float, or an element of scale q beyond max(T);
//   * a bias finite in its own type (double) but +-inf once converted to T;
//   * a V entry that is not finite, of a key whose weight exp(s_j - max) lies in the underflow
//     band (a normal number on one path, a denormal or 0 on another: e^-70 .. e^-120 for float),
//     with the band widened by the scores' rounding bound;
//   * an output column whose unnormalised sum of weights x |v| could exceed max(T) / 4 (the
//     tiled paths accumulate sum_j 2^(s_j - max) v_j before dividing by the row sum).
// Anything else the class of every output is what the contract says, on every path.
#pragma once

#include "finding.hpp"

#include <sdpa/views.hpp>  // sdpa::Index

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <type_traits>
#include <vector>

namespace sdpa_fuzz {

using sdpa::Index;
using Wide = long double;

enum class Class { finite, nan, pos_inf, neg_inf };

inline const char* name(Class c) {
  switch (c) {
    case Class::nan: return "NaN";
    case Class::pos_inf: return "+inf";
    case Class::neg_inf: return "-inf";
    default: return "finite";
  }
}

template <class T>
Class class_of(T x) {
  if (std::isnan(x)) return Class::nan;
  if (std::isinf(x)) return x > 0 ? Class::pos_inf : Class::neg_inf;
  return Class::finite;
}

/// rows x cols elements at data[i * row_stride + j * col_stride]: the harness's own reading of
/// an operand (never the library's views).
template <class T>
struct Strided {
  const T* data = nullptr;
  Index rows = 0, cols = 0, row_stride = 0, col_stride = 1;
  T operator()(Index i, Index j) const { return data[i * row_stride + j * col_stride]; }
};

/// One head's problem as the harness describes it.
template <class T>
struct HeadProblem {
  Strided<T> q, k, v;
  double scale = 1;                  // what the call uses (the default resolved: 1/sqrt(d_k))
  bool tame_scale = true;            // default, or within [1e-3, 1e3]
  std::vector<char> visible;         // nq x nk: masks, causal, lengths and -inf biases allow the pair
  std::vector<Wide> bias;            // nq x nk: the bias as the element type holds it, 0 where none
  std::vector<char> bias_overflows;  // nq x nk: finite in its own type, +-inf once converted to T

  Index nq() const { return q.rows; }
  Index nk() const { return k.rows; }
  Index dk() const { return q.cols; }
  Index dv() const { return v.cols; }
  /// Whether some row may see key j; whether row i may see some key.
  bool key_seen(Index j) const {
    for (Index i = 0; i < nq(); ++i)
      if (visible[std::size_t(i * nk() + j)]) return true;
    return false;
  }
  bool row_sees(Index i) const {
    for (Index j = 0; j < nk(); ++j)
      if (visible[std::size_t(i * nk() + j)]) return true;
    return false;
  }
  void reset_masks() {
    visible.assign(std::size_t(nq() * nk()), 1);
    bias.assign(std::size_t(nq() * nk()), 0);
    bias_overflows.assign(std::size_t(nq() * nk()), 0);
  }
};

/// The element type's constants the expectations are derived from.
template <class T>
struct Precision {
  static constexpr bool is_float = std::is_same_v<T, float>;
  /// Dot products of larger magnitude may overflow T in some evaluation order.
  static Wide overflow() { return is_float ? 1e37L : 1e306L; }
  /// exp(-gap) is a normal number of T on every path for gaps below lo, exactly 0 above hi
  /// (float: FLT_MIN = e^-87.3, the smallest denormal e^-103.3).
  static Wide underflow_lo() { return is_float ? 70 : 690; }
  static Wide underflow_hi() { return is_float ? 120 : 760; }
  static Wide eps() { return std::numeric_limits<T>::epsilon(); }
  static Wide min_normal() { return std::numeric_limits<T>::min(); }
  static Wide denorm_min() { return std::numeric_limits<T>::denorm_min(); }
  static Wide max() { return std::numeric_limits<T>::max(); }
  /// Higham's gamma_n = n u / (1 - n u), u = eps / 2: the relative error bound of a sum or a dot
  /// product of n terms.
  static Wide gamma(Index n) {
    const Wide u = eps() / 2;
    return Wide(n) * u / (1 - Wide(n) * u);
  }
};

/// What the contract says about one query row.
struct RowExpectation {
  bool no_visible_key = false;    // (d): exactly 0, LSE -inf, on every path
  bool row_nan = false;           // a visible score is NaN or +inf: all outputs and the LSE NaN
  bool row_known = false;         // the LSE class and each known column's class are checked
  std::vector<char> column_known;
  std::vector<Class> column_class;
  Class lse_class = Class::finite;

  bool tame = false;  // (b): values below, within the tolerances
  std::vector<Wide> out;
  Wide lse = 0;
  std::vector<Wide> weights;  // nk entries, 0 where invisible
  Wide v_max = 0;             // the largest |v| of a visible key
  Wide tolerance = 0, lse_tolerance = 0, weight_relative = 0, weight_absolute = 0;

  // Diagnostics for a finding: the magnitudes that decide overflow, and why a class is unknown.
  Wide max_scaled_dot = 0, max_unscaled_dot = 0, max_prescaled_q = 0, max_abs_bias = 0;
  std::string unknown_because;
};

inline bool tame_value(Wide x) { return std::isfinite(x) && std::fabs(x) <= 1e3L; }

/// The contract's expectation for query row i (see the header comment).
template <class T>
RowExpectation expect_row(const HeadProblem<T>& p, Index i) {
  using P = Precision<T>;
  const Index nk = p.nk(), dk = p.dk(), dv = p.dv();
  const Wide scale = Wide(T(p.scale));  // the scale as the element type holds it
  const Wide inf = std::numeric_limits<Wide>::infinity();
  RowExpectation e;
  e.column_known.assign(std::size_t(dv), 0);
  e.column_class.assign(std::size_t(dv), Class::finite);

  std::vector<Index> keys;
  for (Index j = 0; j < nk; ++j)
    if (p.visible[std::size_t(i * nk + j)]) keys.push_back(j);
  if (keys.empty()) {
    e.no_visible_key = e.row_known = true;
    e.column_known.assign(std::size_t(dv), 1);
    e.lse_class = Class::neg_inf;
    return e;
  }

  bool tame = p.tame_scale, any_nan = false, overflow = false, bias_overflow = false;
  for (Index c = 0; c < dk; ++c) {
    tame = tame && tame_value(Wide(p.q(i, c)));
    if (std::isfinite(Wide(p.q(i, c))))
      e.max_prescaled_q = std::max(e.max_prescaled_q, std::fabs(scale * Wide(p.q(i, c))));
  }
  // Scores and their rounding bound ds: the dot product of d_k terms and 4 more roundings (the
  // scale, the log2(e) fold of the tiled paths, the bias add and its conversion), relative to
  // the terms' magnitude, plus an absolute denormal rounding per term (a denormal prescaled q
  // keeps few bits) times the key's magnitude.
  std::vector<Wide> s(keys.size()), ds(keys.size());
  for (std::size_t n = 0; n < keys.size(); ++n) {
    const Index j = keys[n];
    Wide sum = 0, scaled_abs = 0, unscaled_abs = 0, k_max = 0;
    bool nan = false;
    for (Index c = 0; c < dk; ++c) {
      const Wide qc = p.q(i, c), kc = p.k(j, c);
      const Wide t = scale * qc * kc;
      nan = nan || std::isnan(t);
      sum += t;
      scaled_abs += std::fabs(t);
      unscaled_abs += std::fabs(qc * kc);
      if (std::isfinite(kc)) k_max = std::max(k_max, std::fabs(kc));
      tame = tame && tame_value(kc);
    }
    const Wide b = p.bias[std::size_t(i * nk + j)];
    bias_overflow = bias_overflow || p.bias_overflows[std::size_t(i * nk + j)];
    tame = tame && std::isfinite(b);
    for (Index c = 0; c < dv; ++c) tame = tame && tame_value(Wide(p.v(j, c)));
    s[n] = sum + b;
    any_nan = any_nan || nan || std::isnan(s[n]) || s[n] == inf;
    if (!nan && (scaled_abs > P::overflow() || unscaled_abs > P::overflow())) overflow = true;
    if (!nan) {
      e.max_scaled_dot = std::max(e.max_scaled_dot, scaled_abs);
      e.max_unscaled_dot = std::max(e.max_unscaled_dot, unscaled_abs);
    }
    if (!std::isnan(b)) e.max_abs_bias = std::max(e.max_abs_bias, std::fabs(b));
    ds[n] = P::gamma(dk + 4) * (scaled_abs + std::fabs(b)) + Wide(dk + 2) * P::denorm_min() * (1 + k_max);
  }

  // A visible pair whose bias overflows T: converted to -inf it may forbid the pair (the
  // library reads a -inf bias as a mask), converted to +inf it makes a NaN row; which one the
  // contract means for a double bias on float data is not settled, so nothing is claimed.
  if (bias_overflow) {
    e.unknown_because = "a bias overflows the element type";
    return e;
  }
  if (any_nan) {  // contract 3 (NaN dominates whatever overflows elsewhere)
    e.row_nan = e.row_known = true;
    e.column_known.assign(std::size_t(dv), 1);
    e.column_class.assign(std::size_t(dv), Class::nan);
    e.lse_class = Class::nan;
    return e;
  }
  // Every path scales the query before its dot products (README, "NaN / Inf in inputs"): an
  // element of scale q that overflows T is +-inf there, and inf x 0 = NaN follows IEEE, not
  // the true score. (scale log2(e) q overflowing on a tiled path alone is not exempt: such a
  // row is not finite there and is redone by the reference.)
  if (e.max_prescaled_q > P::max()) overflow = true;
  if (overflow) {
    e.unknown_because = "a dot product can overflow the element type";
    return e;
  }
  Wide m = -inf, ds_max = 0;
  for (std::size_t n = 0; n < keys.size(); ++n) {
    if (!std::isfinite(s[n])) {  // cannot happen without an overflow; stay safe
      e.unknown_because = "a non-finite score";
      return e;
    }
    m = std::max(m, s[n]);
    ds_max = std::max(ds_max, ds[n]);
  }

  // Weights relative to the row max. A key is "zero" when its weight underflows to exactly 0 on
  // every path, "positive" when it is a normal number on every path; otherwise it is in the band.
  std::vector<char> zero(keys.size()), positive(keys.size());
  std::vector<Wide> w(keys.size()), w_upper(keys.size());
  for (std::size_t n = 0; n < keys.size(); ++n) {
    const Wide gap = m - s[n], err = ds[n] + ds_max;
    zero[n] = gap - err > P::underflow_hi();
    positive[n] = gap + err < P::underflow_lo();
    w[n] = std::exp(-gap);
    w_upper[n] = zero[n] ? 0 : std::min<Wide>(1, std::exp(-(gap - err)));
  }
  e.row_known = true;
  e.lse_class = Class::finite;
  for (Index c = 0; c < dv; ++c) {
    bool known = true, nan = false, pos = false, neg = false;
    Wide accumulated = 0;
    for (std::size_t n = 0; n < keys.size(); ++n) {
      if (zero[n]) continue;  // contract 4: contributes nothing, whatever V holds
      const Wide x = p.v(keys[n], c);
      if (std::isnan(x)) {
        if (positive[n]) nan = true;
        else known = false;
      } else if (std::isinf(x)) {
        if (positive[n]) (x > 0 ? pos : neg) = true;
        else known = false;
      } else {
        accumulated += w_upper[n] * std::fabs(x);
      }
    }
    if (accumulated > P::max() / 4) known = false;
    e.column_known[std::size_t(c)] = known;
    e.column_class[std::size_t(c)] = nan || (pos && neg) ? Class::nan : pos ? Class::pos_inf : neg ? Class::neg_inf : Class::finite;
  }

  // Values, on tame rows: q, the visible K and V rows and their biases finite, |x| <= 1e3, a
  // moderate scale, and score errors small enough that softmax is well conditioned
  // (2 ds <= 0.5; beyond, the bound below grows like e^(2 ds) and would say nothing).
  const Wide eps = P::eps();
  if (!tame || 2 * (ds_max + 8 * eps) > 0.5L) return e;
  Wide sum = 0, v_max = 0;
  for (std::size_t n = 0; n < keys.size(); ++n) sum += w[n];
  e.out.assign(std::size_t(dv), 0);
  e.weights.assign(std::size_t(nk), 0);
  for (std::size_t n = 0; n < keys.size(); ++n) {
    const Wide pn = w[n] / sum;
    e.weights[std::size_t(keys[n])] = pn;
    for (Index c = 0; c < dv; ++c) {
      e.out[std::size_t(c)] += pn * Wide(p.v(keys[n], c));
      v_max = std::max(v_max, std::fabs(Wide(p.v(keys[n], c))));
    }
  }
  e.lse = m + std::log(sum);
  e.v_max = v_max;
  // Tolerance of an output (derivation):
  //  * every score is off by at most ds_max (above), every exp by 8 eps (the SIMD exp2 is
  //    required to be within 2 eps; 8 leaves room), so each unnormalised weight, and the row sum,
  //    is off by a factor within e^(+-(ds_max + 8 eps)): normalised weights relatively by
  //    expm1(2 (ds_max + 8 eps));
  //  * the tiled paths rescale the running sums once per new maximum, up to once per key, each
  //    factor within 2 eps (4 nk eps); the row sum and the blend sum_j p_j v_j add gamma(nk + 2)
  //    each;
  //  * an output blends values of magnitude at most v_max, so its error is that relative error
  //    times v_max, doubled for the second-order terms dropped, plus a few FLT_MIN for results
  //    that land among the denormals.
  // For Nk = 40, d_k = 20 and uniform [-2, 2] inputs this is about 1e-4 * v_max, the order of
  // the 1e-4 (1 + max|V|) first proposed, but it follows the scores' size instead of guessing
  // it. A wrong mask, a lost key tile or a missed rescale moves outputs by O(0.1 v_max).
  const Wide relative = std::expm1(2 * (ds_max + 8 * eps)) + 4 * Wide(nk) * eps + 2 * P::gamma(nk + 2) + eps;
  e.tolerance = 2 * relative * v_max + 4 * P::min_normal();
  // The LSE moves by at most ds_max when the scores do, by gamma(nk + 2) through the row sum,
  // and by a few eps of its own size through log / log2 and the base-2 conversion.
  e.lse_tolerance = 2 * (ds_max + 2 * P::gamma(nk + 2) + 4 * Wide(nk) * eps + 8 * eps * (1 + std::fabs(e.lse)));
  // A weight exp(s_ij - lse_i) recomputed from an LSE carries both errors.
  e.weight_relative = 2 * (std::expm1(2 * (ds_max + 8 * eps) + e.lse_tolerance) + 2 * P::gamma(nk + 2));
  e.weight_absolute = 4 * P::min_normal();
  e.tame = true;
  return e;
}

}  // namespace sdpa_fuzz
