// sdpa/config.hpp - the one place that reads the compiler's ISA macros.
//
// Everything else tests SDPA_HAS_AVX512, SDPA_HAS_AVX2 and SDPA_HAS_NEON, which are
// always defined to 0 or 1 (build with -Wundef and a misspelt name is an error, not a
// silent 0). AVX2 counts only together with FMA (as in ruy/platform.h): every kernel
// leans on fused multiply-add. Define SDPA_FORCE_SCALAR to 1 to build the width-1
// fallback on any machine.
#pragma once

#ifndef SDPA_FORCE_SCALAR
#define SDPA_FORCE_SCALAR 0
#endif

#if !SDPA_FORCE_SCALAR && defined(__AVX512F__) && defined(__AVX512DQ__)
#define SDPA_HAS_AVX512 1
#else
#define SDPA_HAS_AVX512 0
#endif

#if !SDPA_FORCE_SCALAR && defined(__AVX2__) && defined(__FMA__)
#define SDPA_HAS_AVX2 1
#else
#define SDPA_HAS_AVX2 0
#endif

#if !SDPA_FORCE_SCALAR && (defined(__ARM_NEON) || defined(__ARM_NEON__)) && defined(__aarch64__)
#define SDPA_HAS_NEON 1
#else
#define SDPA_HAS_NEON 0
#endif

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
#define SDPA_RESTRICT __restrict__
#else
#define SDPA_ALWAYS_INLINE inline
#define SDPA_RESTRICT
#endif
