// tests/support.hpp - what every test file shares: seeded inputs, an independent long-double
// attention, and tolerances derived from a rounding-error analysis.
//
// The reference here is written plainly and shares no code with the library (not even its
// mask logic), so a bug in the library cannot hide in its own oracle.
#pragma once

#include "catch.hpp"

#include <sdpa/sdpa.hpp>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <initializer_list>
#include <stdexcept>
#include <limits>
#include <map>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace sdpa_test {

using sdpa::Index;
template <class T>
using Matrix = sdpa::Matrix<T>;
using Wide = long double;
/// True where Wide is IEEE binary128 computed in software (AArch64, also under qemu): there
/// the oracle dominates, so the four largest shapes checked against it shrink, keeping their
/// features (the [slow] Nq != Nk pair, the backward's float shape, grouped decoding's keys and
/// the 8192-key split decode).
inline constexpr bool kSoftwareWide = std::numeric_limits<Wide>::digits > 64;

// ---- seeds -----------------------------------------------------------------------------
inline std::uint64_t& seed_storage() {
  static std::uint64_t seed = 0;
  return seed;
}
inline void set_seed(std::uint64_t seed) { seed_storage() = seed; }
/// The run's seed, as the runners (tests/main.cpp, tests/mpi/main.cpp) draw it: SDPA_TEST_SEED
/// when set, otherwise a fresh one.
inline std::uint64_t seed_from_environment() {
  if (const char* text = std::getenv("SDPA_TEST_SEED")) return std::strtoull(text, nullptr, 10);
  std::random_device device;
  return (std::uint64_t(device()) << 32) | device();
}
/// A generator for one test: the run's seed mixed with a per-test salt.
inline std::mt19937_64 rng(std::uint64_t salt) {
  std::seed_seq seq{std::uint32_t(seed_storage()), std::uint32_t(seed_storage() >> 32), std::uint32_t(salt),
                    std::uint32_t(salt >> 32)};
  return std::mt19937_64(seq);
}

template <class T>
Matrix<T> random_matrix(Index rows, Index cols, std::mt19937_64& gen, double lo = -1.0, double hi = 1.0) {
  std::uniform_real_distribution<double> dist(lo, hi);
  Matrix<T> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = T(dist(gen));
  return m;
}

// ---- masks, described independently of the library -------------------------------------
struct MaskSpec {
  bool causal = false;
  Matrix<bool> allowed;        // empty = none; Nq x Nk or 1 x Nk
  Matrix<double> bias;         // empty = none; Nq x Nk or 1 x Nk
  std::vector<Index> lengths;  // empty = none; Nq entries or 1
  // model variants (docs/design.md, "Model variants"); negative window sides = unbounded
  Index window_left = -1, window_right = -1;
  bool alibi = false;
  double slope = 0;    // ALiBi: s -= slope |i' - j|
  double softcap = 0;  // 0 = none: s = softcap tanh(s / softcap)
  bool has_sink = false;
  double sink = 0;  // a logit in each row's denominator

  bool visible(Index i, Index j, Index nq, Index nk) const {
    const Index aligned = i + (nk - nq);  // i', the bottom-right aligned position
    if (causal && j > aligned) return false;
    if (window_left >= 0 && j < aligned - window_left) return false;
    if (window_right >= 0 && j > aligned + window_right) return false;
    if (!lengths.empty() && j >= lengths[lengths.size() == 1 ? 0 : std::size_t(i)]) return false;
    if (allowed.size() != 0 && !allowed(allowed.rows() == 1 ? 0 : i, j)) return false;
    return true;
  }
  double bias_at(Index i, Index j) const { return bias.size() == 0 ? 0.0 : bias(bias.rows() == 1 ? 0 : i, j); }
  /// What ALiBi adds to score (i, j).
  Wide alibi_at(Index i, Index j, Index nq, Index nk) const {
    return alibi ? -Wide(slope) * std::fabs(Wide(i + (nk - nq) - j)) : Wide(0);
  }

  /// Options that ask the library for the same masks (views into this spec: keep it alive).
  sdpa::Options options(sdpa::Kernel kernel = sdpa::Kernel::Auto) const {
    sdpa::Options o;
    o.kernel = kernel;
    o.causal = causal;
    if (allowed.size() != 0) o.mask = allowed;
    if (bias.size() != 0) o.bias = bias;
    o.key_lengths = lengths;
    o.window = {window_left < 0 ? sdpa::Window::unbounded : window_left,
                window_right < 0 ? sdpa::Window::unbounded : window_right};
    if (alibi) o.alibi_slopes = {slope};
    if (softcap > 0) o.softcap = softcap;
    if (has_sink) o.sinks = {sink};
    return o;
  }
};

// ---- the independent reference -------------------------------------------------------------
/// Attention in long double, plus per-row quantities the tolerance needs.
struct Expected {
  Matrix<Wide> out, weights;
  std::vector<Wide> score_magnitude;  // max_j scale * sum_e |q_ie k_je| + |bias_ij| over visible j
  std::vector<Wide> value_magnitude;  // max_c sum_j p_ij |v_jc|: the size of what row i's output blends
  std::vector<Wide> lse;              // log sum_j exp(s_ij) over visible j (and the sink); -inf if none
  Wide softcap = 0;                   // the cap, whose tanh adds an error of its own to each score
};

template <class T>
Expected reference(const Matrix<T>& Q, const Matrix<T>& K, const Matrix<T>& V, double scale, const MaskSpec& mask) {
  const Index nq = Q.rows(), nk = K.rows(), dk = Q.cols(), dv = V.cols();
  Expected e;
  e.out = Matrix<Wide>::Zero(nq, dv);
  e.weights = Matrix<Wide>::Zero(nq, nk);
  e.score_magnitude.assign(std::size_t(nq), 0);
  e.value_magnitude.assign(std::size_t(nq), 0);
  e.lse.assign(std::size_t(nq), -std::numeric_limits<Wide>::infinity());
  e.softcap = mask.softcap;
  const Wide sink = mask.has_sink ? Wide(mask.sink) : -std::numeric_limits<Wide>::infinity();
  for (Index i = 0; i < nq; ++i) {
    std::vector<Wide> s(std::size_t(nk), -std::numeric_limits<Wide>::infinity());
    Wide row_max = sink;
    for (Index j = 0; j < nk; ++j) {
      if (!mask.visible(i, j, nq, nk)) continue;
      Wide dot = 0, magnitude = 0;
      for (Index c = 0; c < dk; ++c) {
        dot += Wide(Q(i, c)) * Wide(K(j, c));
        magnitude += std::fabs(Wide(Q(i, c)) * Wide(K(j, c)));
      }
      s[j] = Wide(scale) * dot;
      if (mask.softcap > 0) s[j] = Wide(mask.softcap) * std::tanh(s[j] / Wide(mask.softcap));
      s[j] += Wide(mask.bias_at(i, j)) + mask.alibi_at(i, j, nq, nk);
      // (the cap cannot enlarge an error: |d/ds cap tanh(s / cap)| <= 1)
      e.score_magnitude[i] = std::max(e.score_magnitude[i], Wide(scale) * magnitude + std::fabs(Wide(mask.bias_at(i, j))) +
                                                                std::fabs(mask.alibi_at(i, j, nq, nk)));
      if (s[j] > row_max) row_max = s[j];
    }
    if (row_max == -std::numeric_limits<Wide>::infinity()) continue;  // fully masked, no sink: zeros
    Wide sum = std::exp(sink - row_max);  // 0 without a sink
    for (Index j = 0; j < nk; ++j) {
      const Wide p = s[j] == -std::numeric_limits<Wide>::infinity() ? 0 : std::exp(s[j] - row_max);
      e.weights(i, j) = p;
      sum += p;
    }
    for (Index j = 0; j < nk; ++j) e.weights(i, j) /= sum;
    e.lse[i] = row_max + std::log(sum);
    for (Index c = 0; c < dv; ++c) {
      Wide acc = 0, magnitude = 0;
      for (Index j = 0; j < nk; ++j) {
        acc += e.weights(i, j) * Wide(V(j, c));
        magnitude += e.weights(i, j) * std::fabs(Wide(V(j, c)));
      }
      e.out(i, c) = acc;
      e.value_magnitude[i] = std::max(e.value_magnitude[i], magnitude);
    }
  }
  return e;
}

// ---- tolerances -----------------------------------------------------------------------------
/// Higham's gamma_n = n u / (1 - n u), u = eps / 2: the bound on the relative error of a sum or
/// dot product of n terms in precision T.
template <class T>
Wide gamma(Index n) {
  const Wide u = Wide(std::numeric_limits<T>::epsilon()) / 2;
  return Wide(n) * u / (1 - Wide(n) * u);
}

/// Largest error a correct float/double implementation may make on row i's outputs:
///  * each score s_ij = scale q_i.k_j + b_ij (+ ALiBi) is off by at most
///      ds = gamma(d_k + 5) * score_magnitude   (d_k-term dot product, the scale, the base-2
///                                               fold of log2 e, the bias and ALiBi adds),
///    plus, with a soft cap, cap * 4 eps: the vector tanh's absolute error (tests/test_exp.cpp
///    requires <= 3 eps) and the product with the cap;
///  * softmax turns score errors of at most ds into relative weight errors of at most
///    2 (ds + e_exp), with e_exp = 8 eps the exp's error (tests/test_exp.cpp requires < 2 eps; it measures 0.84);
///  * the blend sum_j p_ij v_jc and the normalising sum add gamma(Nk + 2) each, relative to
///    sum_j p_ij |v_jc|.
/// The sum of these, times the value magnitude, doubled for the first-order terms dropped.
/// A wrong mask, a lost key tile or a missed rescale changes outputs by O(0.1) instead.
template <class T>
Wide tolerance(const Expected& e, Index i, Index nk, Index dk) {
  const Wide eps = Wide(std::numeric_limits<T>::epsilon());
  const Wide ds = gamma<T>(dk + 5) * e.score_magnitude[std::size_t(i)] + 4 * eps * e.softcap;
  const Wide relative = 2 * (ds + 8 * eps) + 2 * gamma<T>(nk + 2);
  return 2 * relative * e.value_magnitude[std::size_t(i)] + std::numeric_limits<T>::min();
}

/// The largest error of a result stored as O, computed in float: the float path's tolerance
/// (support.hpp), then one rounding to O, which is off by at most O's unit roundoff u (2^-8 for
/// bf16, 2^-11 for fp16) times the float result, or half O's smallest subnormal spacing near 0:
///     |round(x) - exact| <= |x - exact| + u |x| <= tol + u (|exact| + tol).
/// (The constants are written out: Eigen 3.4's numeric_limits<Eigen::half>::epsilon() is 2^-13,
/// not fp16's 2^-10.)
template <class O>
Wide stored_tolerance(Wide float_tolerance, Wide exact) {
  if constexpr (std::is_same_v<O, float>) return float_tolerance;
  constexpr bool bf = std::is_same_v<O, Eigen::bfloat16>;
  const Wide u = std::ldexp(Wide(1), bf ? -8 : -11);       // 8 and 11 significant bits
  const Wide tiny = std::ldexp(Wide(1), bf ? -134 : -25);  // half the smallest subnormal
  return float_tolerance + u * (std::fabs(exact) + float_tolerance) + tiny;
}

/// What bf16 weights add to an output's error when Q, K and V are bf16 and
/// sdpa::bf16_dot_products() holds: that path rounds each weight p_ij to bf16 (relative error at
/// most u = 2^-8) before P V, which moves an output by at most u sum_j p_ij |v_jc| <=
/// u value_magnitude; doubled, as tolerance() doubles its first-order terms. 0 otherwise.
/// Whether a call may take that path: bf16 Q, K and V with the path on, on Kernel::Simd (or
/// Auto, which may choose it), with more query rows than the decode microkernels take or head
/// dims they cannot (not multiples of AVX-512's 16 floats).
template <class Q, class S>
bool may_round_weights(sdpa::Kernel kernel, Index nq, Index dk, Index dv) {
  const bool packed = nq > sdpa::kernels::kDecodeRows || dk % 16 != 0 || dv % 16 != 0;
  return std::is_same_v<Q, Eigen::bfloat16> && std::is_same_v<S, Eigen::bfloat16> && sdpa::bf16_dot_products() &&
         (kernel == sdpa::Kernel::Simd || kernel == sdpa::Kernel::Auto) && packed;
}
/// The term itself, for a call that may round its weights (may_round_weights), else 0.
inline Wide rounded_weights_tolerance(const Expected& e, Index i, bool rounds_weights) {
  return rounds_weights ? 2 * std::ldexp(Wide(1), -8) * e.value_magnitude[std::size_t(i)] : Wide(0);
}

/// Runs f() with bf16 attention widened to float (set_bf16_dot_products(false)), then, where
/// the CPU has AVX512-BF16, again on vdpbf16ps; restores the setting.
template <class F>
void with_each_bf16_dot_setting(F&& f) {
  const bool was = sdpa::detail::bf16_dot_allowed().load();
  sdpa::set_bf16_dot_products(false);
  f();
  if (sdpa::detail::cpu_has_avx512_bf16()) {
    sdpa::set_bf16_dot_products(true);
    f();
  }
  sdpa::detail::bf16_dot_allowed().store(was);
}

/// Checks every element of `got` against the reference within the row's tolerance and
/// reports the worst element when one is out.
template <class T>
void check_attention(const Matrix<T>& got, const Expected& e, Index nk, Index dk, const std::string& what) {
  REQUIRE(got.rows() == e.out.rows());
  REQUIRE(got.cols() == e.out.cols());
  Wide worst_ratio = 0;
  Index worst_i = 0, worst_c = 0;
  bool finite = true;
  for (Index i = 0; i < got.rows(); ++i) {
    const Wide tol = tolerance<T>(e, i, nk, dk);
    for (Index c = 0; c < got.cols(); ++c) {
      if (!std::isfinite(double(got(i, c)))) finite = false;
      const Wide ratio = std::fabs(Wide(got(i, c)) - e.out(i, c)) / tol;
      if (!(ratio <= worst_ratio)) {
        worst_ratio = ratio;
        worst_i = i;
        worst_c = c;
      }
    }
  }
  INFO(what << ": worst element (" << worst_i << ", " << worst_c << ") got "
            << (got.size() ? double(got(worst_i, worst_c)) : 0.0) << " expected "
            << (got.size() ? double(e.out(worst_i, worst_c)) : 0.0) << ", error/tolerance = " << double(worst_ratio));
  CHECK(finite);
  CHECK(worst_ratio <= 1);
}

// ---- errors ---------------------------------------------------------------------------------
/// Runs `call`, requires std::invalid_argument, and requires each fragment in its message.
template <class Call>
void require_invalid(Call&& call, std::initializer_list<const char*> fragments) {
  std::string message;
  try {
    call();
  } catch (const std::invalid_argument& e) {
    message = e.what();
  }
  INFO("message: " << message);
  REQUIRE(!message.empty());
  for (const char* fragment : fragments) {
    INFO("expected fragment: " << fragment);
    CHECK(message.find(fragment) != std::string::npos);
  }
}

// ---- golden cases (tests/data, computed with PyTorch in float64) --------------------------------
/// One golden file: scalars (`causal 1`, `scale 0.3`, `heads 4`) and named matrices.
struct Golden {
  std::map<std::string, double> scalars;
  std::map<std::string, Matrix<double>> matrices;

  bool has(const std::string& name) const { return matrices.count(name) != 0; }
  const Matrix<double>& operator[](const std::string& name) const { return matrices.at(name); }
  double scalar(const std::string& name, double fallback) const {
    const auto it = scalars.find(name);
    return it == scalars.end() ? fallback : it->second;
  }
};

inline Golden load_golden(const std::string& name) {
  const std::string path = std::string(SDPA_TEST_DATA_DIR) + "/" + name;
  std::ifstream in(path);
  if (!in) throw std::runtime_error("cannot open golden file " + path);
  Golden g;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty() || line[0] == '#') continue;
    std::istringstream words(line);
    std::string key;
    words >> key;
    if (key == "matrix") {
      std::string matrix_name;
      Index rows = 0, cols = 0;
      words >> matrix_name >> rows >> cols;
      Matrix<double> m(rows, cols);
      for (Index i = 0; i < rows; ++i) {
        std::getline(in, line);
        std::istringstream values(line);
        for (Index j = 0; j < cols; ++j) {
          std::string token;
          values >> token;
          m(i, j) = std::stod(token);  // accepts "-inf"
        }
      }
      g.matrices[matrix_name] = m;
    } else {
      double value = 0;
      words >> value;
      g.scalars[key] = value;
    }
  }
  return g;
}

inline const std::vector<sdpa::Kernel>& all_kernels() {
  static const std::vector<sdpa::Kernel> kernels{sdpa::Kernel::Reference, sdpa::Kernel::Blocked, sdpa::Kernel::Simd,
                                                 sdpa::Kernel::Auto};
  return kernels;
}

inline const char* name(sdpa::Kernel kernel) {
  switch (kernel) {
    case sdpa::Kernel::Reference: return "Reference";
    case sdpa::Kernel::Blocked: return "Blocked";
    case sdpa::Kernel::Simd: return "Simd";
    case sdpa::Kernel::Auto: return "Auto";
  }
  return "?";
}

}  // namespace sdpa_test
