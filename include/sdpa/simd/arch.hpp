// sdpa/simd/arch.hpp - ISA tags and the vector type they name.
//
// Vec<T, Arch> is a thin wrapper over one native register. Each ISA file specialises it
// with only what the kernels need (the vocabulary of Eigen's PacketMath: load, store,
// broadcast, fma, max, horizontal sum and max, plus the three bit-level steps exp needs).
// The scalar specialisation is a vector of width 1, so generic code always compiles.
#pragma once

#include "../config.hpp"

namespace sdpa::simd {

struct scalar {};
struct neon {};
struct avx2 {};
struct avx512 {};

template <class T, class Arch>
struct Vec;  // specialised in scalar.hpp, avx2.hpp, avx512.hpp, neon.hpp

// `native`: the ISA of this build's microkernels; `native_name`: the same, for reports.
#if SDPA_HAS_AVX512
using native = avx512;
inline constexpr const char* native_name = "avx512";
#elif SDPA_HAS_AVX2
using native = avx2;
inline constexpr const char* native_name = "avx2";
#elif SDPA_HAS_NEON
using native = neon;
inline constexpr const char* native_name = "neon";
#else
using native = scalar;
inline constexpr const char* native_name = "scalar";
#endif

}  // namespace sdpa::simd
