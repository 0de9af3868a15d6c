// What the build has, what the CPU has, which ISA runs, and how to choose another.
#include "catch.hpp"
#include "support.hpp"

#include <sdpa/sdpa.hpp>

#include <cstdlib>

namespace test_isa {  // this file's names, apart from the other files' in a unity build

TEST_CASE("the ISA that runs is one the build has and the CPU supports", "[isa]") {
  const std::vector<sdpa::Isa> compiled = sdpa::compiled_isas();
  REQUIRE(!compiled.empty());
  CHECK(compiled.back() == sdpa::Isa::scalar);  // always there, listed last
  CHECK(std::find(compiled.begin(), compiled.end(), sdpa::isa()) != compiled.end());
  CHECK(sdpa::cpu_supports(sdpa::isa()));
  CHECK(sdpa::cpu_supports(sdpa::Isa::scalar));
  if (const char* requested = std::getenv("SDPA_ISA"); requested && *requested) {
    CHECK(std::string(sdpa::isa_name(sdpa::isa())) == requested);
  } else if (SDPA_DISPATCH) {  // the widest the CPU supports
    for (const sdpa::Isa isa : compiled) {
      if (!sdpa::cpu_supports(isa)) continue;
      CHECK(sdpa::isa() == isa);
      break;
    }
  } else {  // the build's own
    CHECK(sdpa::isa() == compiled.front());
  }
#if SDPA_DISPATCH && SDPA_ARCH_X86_64
  CHECK(compiled == std::vector<sdpa::Isa>{sdpa::Isa::avx512, sdpa::Isa::avx2, sdpa::Isa::scalar});
#endif
}

TEST_CASE("set_isa switches kernels and refuses what the build or CPU lacks", "[isa]") {
  const sdpa::Isa chosen = sdpa::isa();
  for (const sdpa::Isa isa : {sdpa::Isa::scalar, sdpa::Isa::neon, sdpa::Isa::avx2, sdpa::Isa::avx512}) {
    CAPTURE(sdpa::isa_name(isa));
    const auto compiled = sdpa::compiled_isas();
    if (std::find(compiled.begin(), compiled.end(), isa) == compiled.end()) {
      CHECK_THROWS_AS(sdpa::set_isa(isa), std::invalid_argument);
    } else if (!sdpa::cpu_supports(isa)) {
      CHECK_THROWS_AS(sdpa::set_isa(isa), sdpa::unsupported_cpu);
    } else {
      sdpa::set_isa(isa);
      CHECK(sdpa::isa() == isa);
      CHECK(sdpa::kernels::microkernels(isa).width == (isa == sdpa::Isa::avx512 ? 16
                                                       : isa == sdpa::Isa::avx2 ? 8
                                                       : isa == sdpa::Isa::neon ? 4
                                                                                : 1));
    }
  }
  sdpa::set_isa(chosen);
  CHECK(sdpa::isa() == chosen);
  CHECK(std::string(sdpa::isa_name(sdpa::Isa::avx2)) == "avx2");
}

}  // namespace test_isa
