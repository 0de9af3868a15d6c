// A CPU without the ISA a static build was compiled for: the first call must throw
// sdpa::unsupported_cpu naming both, before any kernel runs and before anything is written.
// A dispatch build must instead run the next ISA down. The CPU is made to look older with
// SDPA_CPU_DISABLE, set here before the first call.
#include <sdpa/sdpa.hpp>

#include <cstdio>
#include <cstdlib>
#include <string>

int main() {
  const sdpa::Isa built = sdpa::compiled_isas().front();
  if (built == sdpa::Isa::scalar) {
    std::printf("SKIPPED: a scalar build runs on every CPU: there is nothing to mismatch\n");
    return 77;
  }
  setenv("SDPA_CPU_DISABLE", sdpa::isa_name(built), 1);
  const sdpa::Matrix<float> Q = sdpa::Matrix<float>::Ones(8, 16), K = Q, V = Q;
  sdpa::Matrix<float> out = sdpa::Matrix<float>::Constant(8, 16, 42.0f);
  try {
    sdpa::attention_into(Q, K, V, out);
  } catch (const sdpa::unsupported_cpu& e) {
    const std::string message = e.what();
    std::printf("static build for %s on a CPU without it: %s\n", sdpa::isa_name(built), message.c_str());
    const bool names_both = message.find(std::string("compiled for ") + sdpa::isa_name(built)) != std::string::npos &&
                            message.find("supports only") != std::string::npos;
    return !SDPA_DISPATCH && names_both && (out.array() == 42.0f).all() ? 0 : 1;
  }
  const sdpa::Isa fallback = sdpa::isa();
  std::printf("%s build with %s hidden ran %s\n", SDPA_DISPATCH ? "dispatch" : "static", sdpa::isa_name(built),
              sdpa::isa_name(fallback));
  return SDPA_DISPATCH && fallback != built && (out.array() == 1.0f).all() ? 0 : 1;
}
