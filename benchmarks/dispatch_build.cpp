// benchmarks/dispatch_build.cpp - built with -march=x86-64 -DSDPA_DISPATCH=1 (see
// dispatch_build.hpp and CMakeLists.txt).
#include "dispatch_build.hpp"

#include <sdpa/sdpa.hpp>

#include <string>

const char* dispatch_build_attention(const DispatchHeads& call, const char* isa) {
  static_assert(SDPA_DISPATCH, "dispatch_build.cpp must be compiled with SDPA_DISPATCH=1");
  const sdpa::Isa wanted = [&] {
    for (const sdpa::Isa candidate : sdpa::compiled_isas())
      if (isa && std::string(isa) == sdpa::isa_name(candidate)) return candidate;
    return sdpa::detail::initial_isa();  // what this build picks on its own
  }();
  if (sdpa::isa() != wanted) sdpa::set_isa(wanted);
  using Map = Eigen::Map<const sdpa::Matrix<float>>;
  using OutMap = Eigen::Map<sdpa::Matrix<float>>;
  const long width = call.heads * call.d;
  const Map q(call.q, call.n, width), k(call.k, call.n, width), v(call.v, call.n, width);
  OutMap out(call.out, call.n, width);
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.causal = call.causal;
  options.threads = call.threads;
  for (long h = 0; h < call.heads; ++h)
    sdpa::attention_into(q.middleCols(h * call.d, call.d), k.middleCols(h * call.d, call.d),
                         v.middleCols(h * call.d, call.d), out.middleCols(h * call.d, call.d), options);
  return sdpa::isa_name(sdpa::isa());
}
