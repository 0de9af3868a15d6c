// tests/fuzz/values.hpp - element values: a generator seeded by the input for the bulk (uniform
// [-2, 2] most of the time), the special values the contract is about, and the input's pokes
// that put one of them at an exact place.
#pragma once

#include "byte_reader.hpp"
#include "finding.hpp"

#include <sdpa/views.hpp>

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

namespace sdpa_fuzz {

using sdpa::Index;

/// splitmix64: tiny, and the same sequence on every platform.
class Random {
 public:
  explicit Random(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
  }
  double uniform(double lo, double hi) { return lo + (hi - lo) * double(next() >> 11) * 0x1.0p-53; }
  /// An integer in [0, n); 0 when n <= 0.
  Index below(Index n) { return n <= 0 ? 0 : Index(next() % std::uint64_t(n)); }
  bool chance(double p) { return uniform(0, 1) < p; }

 private:
  std::uint64_t state_;
};

/// The special values: NaN, +-inf, big (1e30), huge (0.88 max: 3e38 for float), denormal
/// (1e-40 for float), 0 and +-1e3 (the edge of tame).
constexpr int kSpecialKinds = 12;
template <class T>
T special_value(int kind) {
  using L = std::numeric_limits<T>;
  constexpr bool is_float = std::is_same_v<T, float>;
  switch (kind % kSpecialKinds) {
    case 0: return L::quiet_NaN();
    case 1: return L::infinity();
    case 2: return -L::infinity();
    case 3: return T(is_float ? 1e30 : 1e200);
    case 4: return T(is_float ? -1e30 : -1e200);
    case 5: return T(L::max() * 0.88);
    case 6: return T(-L::max() * 0.88);
    case 7: return T(is_float ? 1e-40 : 1e-310);
    case 8: return T(is_float ? -1e-40 : -1e-310);
    case 9: return T(0);
    case 10: return T(1e3);
    default: return T(-1e3);
  }
}

/// A quiet NaN with a payload no computation produces: what outputs hold before a call, so that
/// "untouched" is a bit comparison.
template <class T>
T sentinel() {
  T x;
  if constexpr (std::is_same_v<T, float>) {
    const std::uint32_t bits = 0x7fc5a5a5u;
    std::memcpy(&x, &bits, sizeof x);
  } else {
    const std::uint64_t bits = 0x7ff8a5a5a5a5a5a5ull;
    std::memcpy(&x, &bits, sizeof x);
  }
  return x;
}

/// How an input's values are drawn (fields kValues and kSpecialRate).
struct ValueRegime {
  int kind = 0;              // 0 uniform [-2, 2]; 1 the same scaled by 1e-3 .. 500 (still tame); 2, 3 with specials
  double special_rate = 0;   // probability that an element is a special value

  static ValueRegime from(const ByteReader& in) {
    ValueRegime r;
    r.kind = in.pick(kValues, 4);
    static constexpr double kRates[] = {0.002, 0.01, 0.05, 0.2};
    if (r.kind == 2) r.special_rate = kRates[in.pick(kSpecialRate, 4)];
    if (r.kind == 3) r.special_rate = 0.5;
    return r;
  }
  bool has_specials() const { return special_rate > 0; }
};

/// Writes values at `offsets` of `storage` (the elements of one operand's view).
template <class T>
void fill_values(T* storage, const std::vector<Index>& offsets, const ValueRegime& regime, Random& random) {
  static constexpr double kFactors[] = {1e-3, 1.0, 30.0, 500.0};  // |x| <= 1e3: still tame
  const double factor = regime.kind == 1 ? kFactors[random.below(4)] : 1.0;
  for (const Index o : offsets) {
    T x = T(random.uniform(-2, 2) * factor);
    if (regime.has_specials() && random.chance(regime.special_rate)) x = special_value<T>(int(random.below(kSpecialKinds)));
    storage[o] = x;
  }
}

/// Where the input's pokes may land: one operand's storage and the offsets of its elements.
struct PokeTarget {
  void* storage = nullptr;
  bool is_double = false;
  const std::vector<Index>* offsets = nullptr;
  bool is_bias = false;  // SDPA_FUZZ_IGNORE=gen.bias_nan_inf pokes -inf there instead of what may be NaN / +inf in T
};

inline void apply_pokes(const ByteReader& in, const std::vector<PokeTarget>& targets) {
  if (targets.empty()) return;
  for (std::size_t p = 0; p < in.pokes(); ++p) {
    const Poke poke = in.poke(p);
    const PokeTarget& t = targets[poke.target % targets.size()];
    if (!t.offsets || t.offsets->empty()) continue;
    const Index o = (*t.offsets)[poke.index % t.offsets->size()];
    // NaN, +inf, and for a double bias the big and huge values (which are +inf as float).
    const int kind = poke.kind % kSpecialKinds;
    const bool nan_or_inf = kind == 0 || kind == 1 || (t.is_double && (kind == 3 || kind == 5));
    if (t.is_bias && nan_or_inf && ignored("gen.bias_nan_inf")) {
      if (t.is_double) static_cast<double*>(t.storage)[o] = -std::numeric_limits<double>::infinity();
      else static_cast<float*>(t.storage)[o] = -std::numeric_limits<float>::infinity();
      continue;
    }
    if (t.is_double)
      static_cast<double*>(t.storage)[o] = special_value<double>(poke.kind);
    else
      static_cast<float*>(t.storage)[o] = special_value<float>(poke.kind);
  }
}

/// The offsets of every element (i, j) of rows x cols at data[i * row_stride + j * col_stride].
inline std::vector<Index> matrix_offsets(Index rows, Index cols, Index row_stride, Index col_stride) {
  std::vector<Index> offsets;
  for (Index i = 0; i < rows; ++i)
    for (Index j = 0; j < cols; ++j) offsets.push_back(i * row_stride + j * col_stride);
  return offsets;
}

/// Fills the Q, K and V operands (anything with `storage` and `offsets()`) with the input's
/// values, then pokes its special values into them and into the bias. Returns the regime, which
/// the input's description names.
template <class T, class QOperand, class KOperand, class VOperand, class BiasOperand>
ValueRegime fill_operands(const ByteReader& in, QOperand& Q, KOperand& K, VOperand& V, BiasOperand& bias,
                          Random& random) {
  const ValueRegime regime = ValueRegime::from(in);
  const std::vector<Index> q_off = Q.offsets(), k_off = K.offsets(), v_off = V.offsets(), bias_off = bias.offsets();
  fill_values(Q.storage.data(), q_off, regime, random);
  fill_values(K.storage.data(), k_off, regime, random);
  fill_values(V.storage.data(), v_off, regime, random);
  constexpr bool kDouble = std::is_same_v<T, double>;
  apply_pokes(in, {{Q.storage.data(), kDouble, &q_off}, {K.storage.data(), kDouble, &k_off}, {V.storage.data(), kDouble, &v_off},
                   {bias.storage(), bias.is_double, &bias_off, true}});
  return regime;
}

}  // namespace sdpa_fuzz
