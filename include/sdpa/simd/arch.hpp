// sdpa/simd/arch.hpp - ISA tags and the vector type they name.
//
// Vec<T, Arch> is a thin wrapper over one native register. Each ISA file specialises it
// with only what the kernels need (the vocabulary of Eigen's PacketMath: load, store,
// broadcast, fma, max, horizontal sum and max, plus the three bit-level steps exp needs).
// A float vector also loads W Eigen::half or Eigen::bfloat16 values, widened on the way in
// (exactly: every 16-bit value is a float), which is how 16-bit storage reaches the kernels.
// The scalar specialisation is a vector of width 1, so generic code always compiles.
// The vector ISAs' files are included only by kernels/targets.hpp, inside their target's
// attributes: their functions need those instructions.
#pragma once

#include "../config.hpp"
#include "../storage.hpp"

SDPA_BEGIN_NAMESPACE
namespace simd {

struct scalar {};
struct neon {};
struct avx2 {};
struct avx512 {};

template <class T, class Arch>
struct Vec;  // specialised in scalar.hpp, avx2.hpp, avx512.hpp, neon.hpp

}  // namespace simd
SDPA_END_NAMESPACE
