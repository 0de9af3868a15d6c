// sdpa/config.hpp - the one place that reads the compiler's macros.
//
// Everything else tests the 0/1 macros defined here (build with -Wundef and a misspelt name
// is an error, not a silent 0):
//
//   SDPA_BUILD_AVX512, SDPA_BUILD_AVX2, SDPA_BUILD_NEON   what the compiler flags guarantee
//   SDPA_DISPATCH                                         runtime dispatch (opt-in, see below)
//   SDPA_TARGET_AVX512, SDPA_TARGET_AVX2, SDPA_TARGET_NEON
//                                                         which vector kernels this translation
//                                                         unit compiles (the scalar ones always)
//
// AVX2 counts only together with FMA (as in ruy/platform.h): every kernel leans on fused
// multiply-add. Define SDPA_FORCE_SCALAR to 1 to build the width-1 fallback only.
//
// Static mode (the default): the vector kernels are those of the build's flags, and the
// first call checks that the CPU has them (sdpa::unsupported_cpu otherwise). Dispatch mode
// (SDPA_DISPATCH=1, CMake option SDPA_DISPATCH): a build for any baseline carries the
// AVX-512, AVX2+FMA and scalar kernels (NEON and scalar on AArch64), each compiled inside
// its target's pragmas (SDPA_TARGET_BEGIN/END below), and the first call picks the best the CPU has
// (docs/design.md, "Dispatch").
/// \file
/// The configuration macros: what the build targets, dispatch mode, the ISA-tagged namespace.
#pragma once

#ifndef SDPA_FORCE_SCALAR
/// Define to 1 (-DSDPA_FORCE_SCALAR=1) to build the scalar (width-1) kernels only, whatever
/// the compiler flags; 0 by default.
#define SDPA_FORCE_SCALAR 0
#endif
#ifndef SDPA_DISPATCH
/// 1 for dispatch mode (CMake option SDPA_DISPATCH, or -DSDPA_DISPATCH=1): every ISA's kernels
/// are compiled in and the first call picks the best the CPU has. 0 (the default) for static
/// mode: the kernels of the build's own flags, which the CPU must support.
#define SDPA_DISPATCH 0
#endif

/// 1 when compiling for x86-64, 0 otherwise.
#if defined(__x86_64__) || defined(_M_X64)
#define SDPA_ARCH_X86_64 1
#else
#define SDPA_ARCH_X86_64 0
#endif
/// 1 when compiling for AArch64, 0 otherwise.
#if defined(__aarch64__)
#define SDPA_ARCH_AARCH64 1
#else
#define SDPA_ARCH_AARCH64 0
#endif

/// 1 when the compiler flags enable AVX-512 as the kernels use it: F and DQ, plus BW and VL (the
/// x86-64-v4 level, which is what dispatch mode compiles for and checks); 0 otherwise or with
/// SDPA_FORCE_SCALAR.
#if !SDPA_FORCE_SCALAR && defined(__AVX512F__) && defined(__AVX512DQ__) && defined(__AVX512BW__) && \
    defined(__AVX512VL__)
#define SDPA_BUILD_AVX512 1
#else
#define SDPA_BUILD_AVX512 0
#endif
/// 1 when the compiler flags enable AVX2 and FMA; 0 otherwise or with SDPA_FORCE_SCALAR.
#if !SDPA_FORCE_SCALAR && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SDPA_BUILD_AVX2 1
#else
#define SDPA_BUILD_AVX2 0
#endif
/// 1 when compiling for AArch64 with Advanced SIMD (NEON); 0 otherwise or with SDPA_FORCE_SCALAR.
#if !SDPA_FORCE_SCALAR && (defined(__ARM_NEON) || defined(__ARM_NEON__)) && SDPA_ARCH_AARCH64
#define SDPA_BUILD_NEON 1
#else
#define SDPA_BUILD_NEON 0
#endif

/// \def SDPA_TARGET_AVX512
/// 1 when this translation unit compiles the AVX-512 kernels: in dispatch mode on x86-64 (unless
/// SDPA_FORCE_SCALAR), in static mode when SDPA_BUILD_AVX512.
/// \def SDPA_TARGET_AVX2
/// 1 when this translation unit compiles the AVX2 kernels: in dispatch mode on x86-64 (unless
/// SDPA_FORCE_SCALAR), in static mode when SDPA_BUILD_AVX2 and not SDPA_BUILD_AVX512 (whose
/// kernels then run).
/// \def SDPA_TARGET_NEON
/// 1 when this translation unit compiles the NEON kernels: in dispatch mode on AArch64 (unless
/// SDPA_FORCE_SCALAR), in static mode when SDPA_BUILD_NEON.
#if SDPA_DISPATCH && !SDPA_FORCE_SCALAR
#if !(defined(__GNUC__) || defined(__clang__))
#error "SDPA_DISPATCH needs GCC or Clang (per-function target attributes)"
#endif
#define SDPA_TARGET_AVX512 SDPA_ARCH_X86_64
#define SDPA_TARGET_AVX2 SDPA_ARCH_X86_64
#define SDPA_TARGET_NEON SDPA_ARCH_AARCH64
#else
#define SDPA_TARGET_AVX512 SDPA_BUILD_AVX512
#define SDPA_TARGET_AVX2 (SDPA_BUILD_AVX2 && !SDPA_BUILD_AVX512)
#define SDPA_TARGET_NEON SDPA_BUILD_NEON
#endif

// The inline namespace that holds every symbol whose code depends on the ISA: named after
// the build's own level and the mode, so that two translation units built with different
// flags never share one (docs/design.md, "One binary, many ISAs").
/// The build's own ISA level, as a token: `avx512`, `avx2`, `neon` or `scalar`, the widest of
/// SDPA_BUILD_AVX512, SDPA_BUILD_AVX2 and SDPA_BUILD_NEON that is 1.
#if SDPA_BUILD_AVX512
#define SDPA_ISA_LEVEL avx512
#elif SDPA_BUILD_AVX2
#define SDPA_ISA_LEVEL avx2
#elif SDPA_BUILD_NEON
#define SDPA_ISA_LEVEL neon
#else
#define SDPA_ISA_LEVEL scalar
#endif
#define SDPA_CONCAT_(a, b) a##b
#define SDPA_CONCAT(a, b) SDPA_CONCAT_(a, b)
/// The name of the inline namespace: `isa_` followed by SDPA_ISA_LEVEL (such as `isa_avx2`), with
/// `_dispatch` appended in dispatch mode.
#if SDPA_DISPATCH
#define SDPA_ISA_NAMESPACE SDPA_CONCAT(SDPA_CONCAT(isa_, SDPA_ISA_LEVEL), _dispatch)
#else
#define SDPA_ISA_NAMESPACE SDPA_CONCAT(isa_, SDPA_ISA_LEVEL)
#endif
/// Opens sdpa's ISA-tagged namespace: `namespace sdpa { inline namespace isa_... {`.
#define SDPA_BEGIN_NAMESPACE \
  namespace sdpa {           \
  inline namespace SDPA_ISA_NAMESPACE {
/// Closes what SDPA_BEGIN_NAMESPACE opens.
#define SDPA_END_NAMESPACE \
  }                        \
  }

// SDPA_TARGET_BEGIN("avx2,fma") ... SDPA_TARGET_END: every function defined in between is
// compiled for those features, templates and lambdas included (Highway's HWY_BEFORE_NAMESPACE).
#define SDPA_PRAGMA_(text) _Pragma(#text)
#define SDPA_PRAGMA(text) SDPA_PRAGMA_(text)
#if defined(__clang__)
#define SDPA_TARGET_BEGIN(features) \
  SDPA_PRAGMA(clang attribute push(__attribute__((target(features))), apply_to = function))
#define SDPA_TARGET_END SDPA_PRAGMA(clang attribute pop)
#elif defined(__GNUC__)
#define SDPA_TARGET_BEGIN(features) SDPA_PRAGMA(GCC push_options) SDPA_PRAGMA(GCC target(features))
#define SDPA_TARGET_END SDPA_PRAGMA(GCC pop_options)
#else
#define SDPA_TARGET_BEGIN(features)
#define SDPA_TARGET_END
#endif
// The feature sets of the x86 targets: the vector and bit-manipulation parts of the x86-64-v4
// and -v3 levels, exactly what cpu_supports() (isa.hpp) checks, so that a kernel compiled
// here never needs more than the check verified.
#define SDPA_FEATURES_AVX512 "avx512f,avx512dq,avx512bw,avx512vl,avx512cd,avx2,fma,f16c,bmi,bmi2"
#define SDPA_FEATURES_AVX2 "avx2,fma,f16c,bmi,bmi2"

// SDPA_BASELINE_CODE before a function: compiled for baseline x86-64 whatever the build's
// flags, for the CPU check (isa.hpp), which must run on the older CPU it is there to catch.
// Never inlined: inlined into a caller, its body would take the caller's flags.
#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
#define SDPA_BASELINE_CODE __attribute__((target("arch=x86-64"), noinline))
#else
#define SDPA_BASELINE_CODE
#endif

/// 1 when the compiler has OpenMP enabled (_OPENMP), 0 otherwise. Without it a call runs on one
/// thread unless Options::parallel_for is given.
#if defined(_OPENMP)
#define SDPA_HAS_OPENMP 1
#else
#define SDPA_HAS_OPENMP 0
#endif

// SDPA_UNROLL before a loop with a small constant trip count (the rows and vectors of a
// microkernel's register block): the accumulators only live in registers once the loop is
// unrolled, which GCC does at -O3 but not at -O2 (measured: 3x slower at -O2 without it).
#if defined(__clang__)
#define SDPA_UNROLL _Pragma("unroll")
#elif defined(__GNUC__)
#define SDPA_UNROLL _Pragma("GCC unroll 16")
#else
#define SDPA_UNROLL
#endif

#if defined(__GNUC__) || defined(__clang__)
#define SDPA_ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define SDPA_ALWAYS_INLINE inline
#endif
