// tests/main.cpp - Catch2's runner, with the random seed printed and settable.
//
// Every random input in the tests derives from one seed: SDPA_TEST_SEED=<n> reproduces a run,
// otherwise a fresh seed is drawn and printed first.
//
// The kernels under test are those of sdpa::isa(): SDPA_ISA=<isa> picks them. When the build
// has that ISA but this CPU does not, the run exits with kSkipped, which CTest reports as
// "Skipped" under the test's name (SKIP_RETURN_CODE in tests/CMakeLists.txt); so does a run
// whose SDPA_TEST_REQUIRES=avx512_bf16 the CPU or kernels cannot meet.
#if __has_include(<catch2/catch_session.hpp>)
#include <catch2/catch_session.hpp>
#else
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>
#endif

#include "support.hpp"

#include <sdpa/isa.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

namespace {
constexpr int kSkipped = 77;
}

int main(int argc, char* argv[]) {
  const std::uint64_t seed = sdpa_test::seed_from_environment();
  sdpa_test::set_seed(seed);
  std::printf("sdpa tests: random seed %llu (rerun with SDPA_TEST_SEED=%llu)\n", (unsigned long long)seed,
              (unsigned long long)seed);
  try {
    std::printf("sdpa tests: kernels of %s (compiled: %s)\n", sdpa::isa_name(sdpa::isa()),
                sdpa::detail::isa_list().c_str());
  } catch (const sdpa::unsupported_cpu& e) {
    std::printf("SKIPPED: %s\n", e.what());
    return kSkipped;
  }
  if (const char* requires_ = std::getenv("SDPA_TEST_REQUIRES"); requires_ && std::string(requires_) == "avx512_bf16" &&
      !sdpa::bf16_dot_products()) {
    std::printf("SKIPPED: needs the AVX-512 kernels on a CPU with AVX512-BF16 (SDPA_TEST_REQUIRES=avx512_bf16)\n");
    return kSkipped;
  }
  return Catch::Session().run(argc, argv);
}
