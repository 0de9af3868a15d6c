// sdpa/isa.hpp - which instruction set runs the kernels: what the build has, what the CPU
// has, which one runs, and how to choose another.
/// \file
/// Which instruction set runs the kernels: Isa, isa(), set_isa(), cpu_supports(), compiled_isas(), and
/// whether bf16 attention uses AVX512-BF16: bf16_dot_products(), set_bf16_dot_products().
#pragma once

#include "config.hpp"

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#if SDPA_ARCH_AARCH64 && defined(__linux__)
#include <sys/auxv.h>
#endif
#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#endif

namespace sdpa {

/// The instruction sets sdpa has kernels for, from narrowest to widest.
enum class Isa {
  scalar,  ///< width-1 C++ (any CPU)
  neon,    ///< AArch64 Advanced SIMD, 4 floats
  avx2,    ///< x86-64 AVX2 + FMA (+ F16C, BMI1/2: the x86-64-v3 level), 8 floats
  avx512,  ///< x86-64 AVX-512 F/DQ/BW/VL/CD (the x86-64-v4 level), 16 floats
};

/// Thrown by the first sdpa call when the CPU lacks the instruction set the code was
/// compiled for (static mode), or when SDPA_ISA / set_isa asks for one it lacks.
class unsupported_cpu : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace sdpa

SDPA_BEGIN_NAMESPACE

/// "scalar", "neon", "avx2" or "avx512".
SDPA_BASELINE_CODE inline const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::neon: return "neon";
    case Isa::avx2: return "avx2";
    case Isa::avx512: return "avx512";
    default: return "scalar";
  }
}

namespace detail {
/// SDPA_CPU_DISABLE=avx512[,avx2,avx512_bf16,...] in the environment: behave as if the CPU lacked those
/// ISAs (to try the AVX2 path of a dispatch build on an AVX-512 machine, or to see the error a
/// static build gives on an older CPU, as the tests do).
SDPA_BASELINE_CODE inline bool disabled_by_environment(const char* name) {
  const char* list = std::getenv("SDPA_CPU_DISABLE");
  if (!list) return false;
  const std::size_t length = std::strlen(name);
  for (const char* item = list;; ++item) {  // the comma-separated names, one at a time
    const std::size_t item_length = std::strcspn(item, ",");
    if (item_length == length && std::strncmp(item, name, length) == 0) return true;
    item += item_length;
    if (*item == '\0') return false;
  }
}
SDPA_BASELINE_CODE inline bool disabled_by_environment(Isa isa) { return disabled_by_environment(isa_name(isa)); }

#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
/// F16C (the fp16 <-> float conversions), read from cpuid: GCC 12's __builtin_cpu_supports
/// reports it absent on CPUs that have it, and Clang 14's does not know the name.
SDPA_BASELINE_CODE inline bool cpu_has_f16c() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid(1, &eax, &ebx, &ecx, &edx) && (ecx & bit_F16C) != 0;
}
/// AVX512-BF16 (vdpbf16ps), cpuid leaf 7 subleaf 1, EAX bit 5 (GCC 12's and Clang 14's
/// __builtin_cpu_supports do not agree on its name).
SDPA_BASELINE_CODE inline bool cpu_has_avx512_bf16() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 5)) != 0;
}
#else
SDPA_BASELINE_CODE inline bool cpu_has_avx512_bf16() { return false; }  // not x86-64, or no way to ask
#endif
}  // namespace detail

/// True when this CPU (and its operating system, which must save the wider registers) can
/// run kernels of `isa`, and SDPA_CPU_DISABLE does not name it.
SDPA_BASELINE_CODE inline bool cpu_supports(Isa isa) {
  if (isa != Isa::scalar && detail::disabled_by_environment(isa)) return false;
  switch (isa) {
    case Isa::scalar: return true;
#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
    case Isa::avx2:  // __builtin_cpu_supports also checks that the OS saves the ymm/zmm state
      __builtin_cpu_init();
      return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && detail::cpu_has_f16c() &&
             __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2");
    case Isa::avx512:
      return cpu_supports(Isa::avx2) && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
             __builtin_cpu_supports("avx512cd");
#elif SDPA_ARCH_X86_64
    case Isa::avx2: return SDPA_BUILD_AVX2 != 0;  // no way to ask: trust the build
    case Isa::avx512: return SDPA_BUILD_AVX512 != 0;
#endif
#if SDPA_ARCH_AARCH64 && defined(__linux__) && defined(HWCAP_ASIMD)
    case Isa::neon: return (getauxval(AT_HWCAP) & HWCAP_ASIMD) != 0;
#elif SDPA_ARCH_AARCH64
    case Isa::neon: return true;  // Advanced SIMD is part of every AArch64 CPU the ABI allows
#endif
    default: return false;
  }
}

namespace detail {
/// True when this translation unit has the kernels of `isa` (compiled_isas() as a test).
SDPA_BASELINE_CODE inline bool compiled(Isa isa) {
  return isa == Isa::scalar || (isa == Isa::avx512 && SDPA_TARGET_AVX512) || (isa == Isa::avx2 && SDPA_TARGET_AVX2) ||
         (isa == Isa::neon && SDPA_TARGET_NEON);
}
}  // namespace detail

/// The ISAs whose kernels this translation unit was compiled with, widest first. Static
/// mode: the build's own and scalar; dispatch mode: every one of the architecture.
inline std::vector<Isa> compiled_isas() {
  std::vector<Isa> isas;
  for (const Isa isa : {Isa::avx512, Isa::avx2, Isa::neon, Isa::scalar})
    if (detail::compiled(isa)) isas.push_back(isa);
  return isas;
}

namespace detail {

inline std::string isa_list() {
  std::string names;
  for (const Isa isa : compiled_isas()) names += std::string(names.empty() ? "" : ", ") + isa_name(isa);
  return names;
}

/// The widest ISA of this architecture that the CPU supports, by name.
SDPA_BASELINE_CODE inline const char* widest_supported() {
  for (const Isa isa : {Isa::avx512, Isa::avx2, Isa::neon})
    if (cpu_supports(isa)) return isa_name(isa);
  return "scalar";
}

/// `isa`, after checking that the build has it and the CPU can run it; `source` says who asked.
inline Isa checked_isa(Isa isa, const std::string& source) {
  if (!compiled(isa))
    throw std::invalid_argument("sdpa: " + source + " asks for " + isa_name(isa) + ", but this build has only " +
                                isa_list() + (SDPA_DISPATCH ? "" : " (build with SDPA_DISPATCH for every ISA)"));
  if (!cpu_supports(isa))
    throw unsupported_cpu("sdpa: " + source + " asks for " + isa_name(isa) + ", but this CPU does not support it");
  return isa;
}

/// Static mode: the build's own ISA, which the CPU must support; sdpa::unsupported_cpu naming
/// both otherwise. Compiled for baseline x86-64 whatever the build's flags (no std::string,
/// no vector code: snprintf and the exception's constructor live in the C and C++ runtimes),
/// so that the check itself runs on the older CPU it is there to catch.
SDPA_BASELINE_CODE inline Isa require_built_isa() {
  const Isa built = SDPA_TARGET_AVX512 ? Isa::avx512 : SDPA_TARGET_AVX2 ? Isa::avx2 : SDPA_TARGET_NEON ? Isa::neon : Isa::scalar;
  if (cpu_supports(built)) return built;
  char message[320];
  std::snprintf(message, sizeof message,
                "sdpa: this code was compiled for %s (its -march flags), but this CPU supports only %s: build it for "
                "this CPU, or with SDPA_DISPATCH to choose at run time",
                isa_name(built), widest_supported());
  throw unsupported_cpu(message);
}

/// The ISA the first call settles on: SDPA_ISA from the environment when set; otherwise, in
/// dispatch mode, the widest the CPU supports, and in static mode the build's own, which the
/// CPU must support (a clear error here instead of an illegal instruction later).
inline Isa isa_from_environment(const char* requested) {
  for (const Isa isa : {Isa::scalar, Isa::neon, Isa::avx2, Isa::avx512})
    if (std::string(requested) == isa_name(isa)) return checked_isa(isa, std::string("SDPA_ISA=") + requested);
  throw std::invalid_argument(std::string("sdpa: SDPA_ISA=") + requested + " names no ISA; this build has " +
                              isa_list());
}

SDPA_BASELINE_CODE inline Isa initial_isa() {
  if (const char* requested = std::getenv("SDPA_ISA"); requested && *requested) return isa_from_environment(requested);
  if (!SDPA_DISPATCH) return require_built_isa();
  for (const Isa isa : {Isa::avx512, Isa::avx2, Isa::neon})
    if (compiled(isa) && cpu_supports(isa)) return isa;
  return Isa::scalar;
}

inline std::atomic<Isa>& active_isa() {
  static std::atomic<Isa> active{initial_isa()};  // throws, and is retried, until it succeeds
  return active;
}

}  // namespace detail

/// The ISA whose kernels run. The first call decides (see docs/design.md, "Dispatch") and
/// throws sdpa::unsupported_cpu if the CPU cannot run what was asked for or compiled.
inline Isa isa() { return detail::active_isa().load(std::memory_order_relaxed); }

/// Runs every later call with the kernels of `isa` (tests, benchmarks, or a user who knows
/// better). Throws std::invalid_argument if this build lacks them and sdpa::unsupported_cpu
/// if the CPU does. Not meant to be called while other threads run attention.
inline void set_isa(Isa isa) {
  const Isa checked = detail::checked_isa(isa, "set_isa");
  detail::active_isa().store(checked, std::memory_order_relaxed);
}

namespace detail {
/// Whether bf16_dot_products() may be true: the CPU has AVX512-BF16 and SDPA_CPU_DISABLE does not
/// name avx512_bf16; set_bf16_dot_products changes it.
inline std::atomic<bool>& bf16_dot_allowed() {
  static std::atomic<bool> allowed{cpu_has_avx512_bf16() && !disabled_by_environment("avx512_bf16")};
  return allowed;
}
}  // namespace detail

/// True when attention on bf16 queries, keys and values (prefill: more than a few query rows)
/// takes both of its products with AVX512-BF16's vdpbf16ps, 32 multiply-adds per instruction
/// against 16 for float FMAs: this build has the AVX-512 kernels, isa() is avx512, the CPU
/// has AVX512-BF16, and neither SDPA_CPU_DISABLE=avx512_bf16 nor set_bf16_dot_products(false)
/// turned it off. The weights are then rounded to bf16 before they multiply V, as in PyTorch's
/// and oneDNN's bf16 attention, which adds at most 2^-8 sum_j p_j |v_j| to an output (README,
/// "Half precision"); otherwise bf16 is widened to float and computed as float is, bit for bit.
inline bool bf16_dot_products() {
  return SDPA_TARGET_AVX512 && isa() == Isa::avx512 && detail::bf16_dot_allowed().load(std::memory_order_relaxed);
}

/// Turns the vdpbf16ps path (bf16_dot_products) on or off for later calls. Turning it on
/// throws sdpa::unsupported_cpu when the CPU lacks AVX512-BF16. Not meant to be called while
/// other threads run attention.
inline void set_bf16_dot_products(bool on) {
  if (on && !detail::cpu_has_avx512_bf16())
    throw unsupported_cpu("sdpa: set_bf16_dot_products(true) asks for AVX512-BF16, but this CPU does not support it");
  detail::bf16_dot_allowed().store(on, std::memory_order_relaxed);
}

SDPA_END_NAMESPACE
