// tests/fuzz/call_options.hpp - the options every scenario decodes the same way: kernel,
// scale, tile sizes, threads, and which invalid mutation (if any) the input asks for.
#pragma once

#include "byte_reader.hpp"
#include "finding.hpp"

#include <sdpa/options.hpp>

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>

namespace sdpa_fuzz {

template <class T>
const char* type_name() {
  return std::is_same_v<T, float> ? "float" : "double";
}

inline const char* name(sdpa::Kernel k) {
  switch (k) {
    case sdpa::Kernel::Reference: return "Reference";
    case sdpa::Kernel::Blocked: return "Blocked";
    case sdpa::Kernel::Simd: return "Simd";
    default: return "Auto";
  }
}

/// The paths whose results are compared: the three kernels, and Auto (whichever it picks).
inline constexpr sdpa::Kernel kPaths[] = {sdpa::Kernel::Reference, sdpa::Kernel::Blocked, sdpa::Kernel::Simd,
                                          sdpa::Kernel::Auto};

/// The kernel of the input's main call (field kKernel).
inline sdpa::Kernel main_kernel(const ByteReader& in) {
  static constexpr sdpa::Kernel kernels[] = {sdpa::Kernel::Auto, sdpa::Kernel::Reference, sdpa::Kernel::Blocked,
                                             sdpa::Kernel::Simd};
  return kernels[in.pick(kKernel, 4)];
}

/// options.scale (fields kScale, kScaleValue): the default; moderate, 0.01 .. 10; tiny; huge.
/// The tiny and huge lists cross float's limits (1e-46 and 1e-300 round to 0, 3.5e38 and
/// 1e300 to inf): contract 1 makes those invalid for float, and valid for double.
inline std::optional<double> decode_scale(const ByteReader& in) {
  static constexpr double kTiny[] = {1e-10, 1e-30, 1e-38, 1e-40, 1e-45, 1.5e-45, 1e-46, 1e-300};
  static constexpr double kHuge[] = {1e10, 1e30, 1e38, 3e38, 3.4e38, 3.5e38, 1e300, 1e308};
  const int v = in.byte(kScaleValue);
  switch (in.pick(kScale, 4)) {
    case 1: return 0.01 * std::pow(1000.0, v / 255.0);
    case 2: return kTiny[v % 8];
    case 3: return kHuge[v % 8];
    default: return std::nullopt;
  }
}

/// A scale for which tolerances are meaningful: the default, or within [1e-3, 1e3].
inline bool tame_scale(const std::optional<double>& scale) { return !scale || (*scale >= 1e-3 && *scale <= 1e3); }

/// Contract 1: options.scale is positive and finite, also once converted to T.
template <class T>
bool valid_scale(double scale) {
  const T t = T(scale);
  return t > T(0) && std::isfinite(t);
}

/// options.blocks from the input: 0 .. 70 each (0 = automatic).
inline sdpa::BlockConfig decode_blocks(const ByteReader& in) { return {in.byte(kQueryRows) % 71, in.byte(kKeyRows) % 71}; }

/// The invalid mutation the input asks for (field kInvalid = 1 + its index), or none;
/// SDPA_FUZZ_IGNORE=gen.mutation.<name> turns one off.
template <class Mutation>
Mutation decode_mutation(const ByteReader& in, const char* const* names) {
  const int v = in.byte(kInvalid);
  if (v < 1 || v >= int(Mutation::count)) return Mutation::none;
  if (ignored(std::string("gen.mutation.") + names[v])) return Mutation::none;
  return Mutation(v);
}

}  // namespace sdpa_fuzz
