// sdpa/kernels/targets.hpp - the tiled kernels, compiled once per target ISA, and the switch
// that runs the chosen one.
//
// The tiled loop, the online softmax, exp and the microkernels are written once, generic over
// the vector type, in the *-inl.hpp files. This header includes them once per target, each
// time inside that target's namespace (kernels::avx512, kernels::avx2, kernels::neon,
// kernels::scalar) and, for an ISA beyond the build's flags (dispatch mode), between
// SDPA_TARGET_BEGIN/END, which compile every function in between for that ISA. This is
// Highway's foreach_target technique with the target list fixed here (docs/design.md,
// "Dispatch"). The scalar target is compiled with the build's own flags and also runs the
// Blocked path.
#pragma once

#include "../detail/mask_policy.hpp"
#include "../detail/parallel.hpp"
#include "../detail/scratch.hpp"
#include "../isa.hpp"
#include "../options.hpp"
#include "../simd/arch.hpp"
#include "../simd/scalar.hpp"
#include "block_config.hpp"
#include "compute_rows.hpp"
#include "merge.hpp"
#include "reference.hpp"
#include "reference_backward.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <type_traits>
#include <vector>

#if SDPA_TARGET_AVX2 || SDPA_TARGET_AVX512
#include <immintrin.h>
#endif
#if SDPA_TARGET_NEON
#include <arm_neon.h>
#endif

SDPA_BEGIN_NAMESPACE
namespace kernels {

/// One target's microkernels behind plain function pointers (kernels/testing-inl.hpp), for
/// tests that call each at every size; `microkernels(isa)` returns a target's set.
struct MicrokernelSet {
  int width;        ///< floats per vector
  int rows;         ///< R: rows of the register block of the score and value microkernels
  int vectors;      ///< C: vectors per row of the block (a key tile row is C * width keys)
  int decode_rows;  ///< rows of the decode microkernels (RowTiles)
  /// s (rows, C W) = q (rows, d_k) kt (d_k, C W), rows in [1, R]
  void (*score_block)(Index rows, const float* q, Index dk, const float* kt, Index kt_ld, float* s, Index s_ld);
  /// the same scores folded into each row's online softmax: p = 2^(s - max'), rescale =
  /// 2^(max - max'); running_max and running_sum are each row's state, read and updated
  void (*score_softmax_block)(Index rows, const float* q, Index dk, const float* kt, Index kt_ld, float* p,
                              Index p_ld, float* running_max, float* running_sum, float* rescale);
  /// acc (rows, vectors W) = rescale acc + p (rows, keys) v (keys, vectors W), rows in [1, R],
  /// vectors C or 1
  void (*value_block)(Index rows, Index vectors, const float* p, Index p_ld, Index keys, const float* v, Index v_ld,
                      const float* rescale, float* acc, Index acc_ld);
  /// decoding: s (rows, keys) = q (rows, d_k) K^T with K's rows read in place; d_k a multiple of W
  void (*row_scores)(Index rows, const float* q, Index dk, const float* k, Index k_ld, Index keys, float* s,
                     Index s_ld);
  /// decoding: acc (rows, d_v) = rescale acc + p V with V's rows read in place; d_v a multiple of W
  void (*row_accumulate)(Index rows, const float* p, Index p_ld, Index keys, const float* v, Index v_ld, Index dv,
                         const float* rescale, float* acc);
  /// sums[t] = the lanes of vector t summed, for the width x width floats of `vectors`: all at
  /// once (reduce_add_each, as the decode scores sum them) and one vector at a time (reduce_add)
  void (*reduce_add_each)(const float* vectors, float* sums) = nullptr;
  void (*reduce_add_one_by_one)(const float* vectors, float* sums) = nullptr;
  /// AVX512-BF16's microkernels (Bf16Tiles), through its packing; null in the targets without
  /// them. Scores: s (rows, keys) = scale q k^T, for q (rows, d_k) and k (keys, d_k) rows of bf16.
  void (*bf16_scores)(Index rows, const Eigen::bfloat16* q, Index dk, const Eigen::bfloat16* k, Index keys,
                      float scale, float* s, Index s_ld) = nullptr;
  /// acc (rows, d_v) = rescale acc + bf16(p) (rows, keys) v (keys, d_v), v rows of bf16
  void (*bf16_accumulate)(Index rows, const float* p, Index p_ld, Index keys, const Eigen::bfloat16* v, Index dv,
                          const float* rescale, float* acc, Index acc_ld) = nullptr;
  /// elementwise over n floats (n a multiple of width): 2^x, e^x, tanh x, max(x, 1), min(x, 1)
  void (*exp2)(const float* x, float* y, Index n) = nullptr;
  void (*exp)(const float* x, float* y, Index n) = nullptr;
  void (*tanh)(const float* x, float* y, Index n) = nullptr;
  void (*max_with_one)(const float* x, float* y, Index n) = nullptr;
  void (*min_with_one)(const float* x, float* y, Index n) = nullptr;
};

}  // namespace kernels
SDPA_END_NAMESPACE

// Every storage pair (storage.hpp, detail::is_storage_pair), for the explicit instantiations.
#define SDPA_FOR_EACH_STORAGE_PAIR(X)                                                                 \
  X(float, float) X(double, double) X(long double, long double) X(Eigen::bfloat16, Eigen::bfloat16)   \
  X(Eigen::half, Eigen::half) X(float, Eigen::bfloat16) X(float, Eigen::half) X(float, BlockQ8_0)     \
  X(Eigen::bfloat16, Eigen::half) X(Eigen::bfloat16, BlockQ8_0) X(Eigen::half, Eigen::bfloat16)        \
  X(Eigen::half, BlockQ8_0)

// Compiling the kernels once per program (README, "Build time"). The paths (entry-inl.hpp,
// Paths<Q, S>) are what takes a compiler its time. A program may define SDPA_EXTERN_KERNELS in
// all of its translation units, so that they only declare the paths, and in one of them also
// SDPA_INSTANTIATE_KERNELS, which compiles every target's paths for every storage pair there;
// or SDPA_INSTANTIATE_KERNELS_<TARGET> (AVX512, AVX2, NEON, SCALAR) in one unit per target,
// which a parallel build compiles side by side. Every unit must see the same ISA flags.
// Each target's block below sets SDPA_KERNELS_SELECTED when its own macro is defined.

// Opens (closes) a target's namespace, where target-inl.hpp's files find `Arch`, the
// target's vector tag, and `kIsa`, its Isa.
#define SDPA_TARGET_KERNELS(name, isa_value)          \
  SDPA_BEGIN_NAMESPACE namespace kernels {            \
  namespace name {                                    \
  using Arch = simd::name;                            \
  inline constexpr Isa kIsa = isa_value;
#define SDPA_TARGET_KERNELS_END \
  }                             \
  }                             \
  SDPA_END_NAMESPACE

#if SDPA_TARGET_AVX512
#if !SDPA_BUILD_AVX512
SDPA_TARGET_BEGIN(SDPA_FEATURES_AVX512)
#endif
#include "../simd/avx512.hpp"
#ifdef SDPA_INSTANTIATE_KERNELS_AVX512
#define SDPA_KERNELS_SELECTED
#endif
SDPA_TARGET_KERNELS(avx512, Isa::avx512)
#define SDPA_IN_AVX512_TARGET  // (bf16_tiles-inl.hpp: AVX512-BF16's kernels go here only)
#include "target-inl.hpp"
#undef SDPA_IN_AVX512_TARGET
SDPA_TARGET_KERNELS_END
#undef SDPA_KERNELS_SELECTED
#if !SDPA_BUILD_AVX512
SDPA_TARGET_END
#endif
#endif

#if SDPA_TARGET_AVX2
#if !SDPA_BUILD_AVX2
SDPA_TARGET_BEGIN(SDPA_FEATURES_AVX2)
#endif
#include "../simd/avx2.hpp"
#ifdef SDPA_INSTANTIATE_KERNELS_AVX2
#define SDPA_KERNELS_SELECTED
#endif
SDPA_TARGET_KERNELS(avx2, Isa::avx2)
#include "target-inl.hpp"
SDPA_TARGET_KERNELS_END
#undef SDPA_KERNELS_SELECTED
#if !SDPA_BUILD_AVX2
SDPA_TARGET_END
#endif
#endif

#if SDPA_TARGET_NEON  // NEON is part of every AArch64 baseline: no attributes needed
#include "../simd/neon.hpp"
#ifdef SDPA_INSTANTIATE_KERNELS_NEON
#define SDPA_KERNELS_SELECTED
#endif
SDPA_TARGET_KERNELS(neon, Isa::neon)
#include "target-inl.hpp"
SDPA_TARGET_KERNELS_END
#undef SDPA_KERNELS_SELECTED
#endif

#ifdef SDPA_INSTANTIATE_KERNELS_SCALAR
#define SDPA_KERNELS_SELECTED
#endif
SDPA_TARGET_KERNELS(scalar, Isa::scalar)  // always, with the build's own flags
#include "target-inl.hpp"
SDPA_TARGET_KERNELS_END
#undef SDPA_KERNELS_SELECTED

#undef SDPA_TARGET_KERNELS
#undef SDPA_TARGET_KERNELS_END

SDPA_BEGIN_NAMESPACE
namespace kernels {

/// Calls f(Target{}) with the Target (kernels/entry-inl.hpp) of `isa`, which this build must
/// have (sdpa::isa() and set_isa() guarantee it).
template <class F>
decltype(auto) with_target(Isa isa, F&& f) {
  switch (isa) {
#if SDPA_TARGET_AVX512
    case Isa::avx512: return f(avx512::Target{});
#endif
#if SDPA_TARGET_AVX2
    case Isa::avx2: return f(avx2::Target{});
#endif
#if SDPA_TARGET_NEON
    case Isa::neon: return f(neon::Target{});
#endif
    default: return f(scalar::Target{});
  }
}

/// The microkernels of `isa`, for tests (kernels/testing-inl.hpp).
inline MicrokernelSet microkernels(Isa isa) {
  return with_target(detail::checked_isa(isa, "kernels::microkernels"), [](auto target) {
    return decltype(target)::microkernels();
  });
}

}  // namespace kernels
SDPA_END_NAMESPACE
