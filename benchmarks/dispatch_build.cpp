// benchmarks/dispatch_build.cpp - built with -march=x86-64 -DSDPA_DISPATCH=1 (see
// dispatch_build.hpp and CMakeLists.txt).
// Its ISA namespace is not the other files': it compiles its own kernels, not sdpa_kernels'.
#undef SDPA_EXTERN_KERNELS

#include "dispatch_build.hpp"

#include <sdpa/sdpa.hpp>

#include <string>

namespace {

/// Runs `run` on copies of Q, K, V rounded to S, made when the inputs change.
template <class S, class M, class Run>
void run_rounded(const DispatchHeads& call, const M& q, const M& k, const M& v, const Run& run) {
  static const float* made_from = nullptr;
  static sdpa::Matrix<S> q16, k16, v16, out16;
  if (made_from != call.q || q16.rows() != call.n || q16.cols() != call.width) {
    q16 = q.template cast<S>();
    k16 = k.template cast<S>();
    v16 = v.template cast<S>();
    out16 = sdpa::Matrix<S>::Zero(call.n, call.width);
    made_from = call.q;
  }
  run(q16, k16, v16, out16);
}

}  // namespace

const char* dispatch_build_attention(const DispatchHeads& call, const char* isa) {
  static_assert(SDPA_DISPATCH, "dispatch_build.cpp must be compiled with SDPA_DISPATCH=1");
  const sdpa::Isa wanted = [&] {
    for (const sdpa::Isa candidate : sdpa::compiled_isas())
      if (isa && std::string(isa) == sdpa::isa_name(candidate)) return candidate;
    return sdpa::detail::initial_isa();  // what this build picks on its own
  }();
  if (sdpa::isa() != wanted) sdpa::set_isa(wanted);
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.causal = call.causal;
  options.threads = call.threads;
  const auto run = [&](const auto& q, const auto& k, const auto& v, auto& out) {
    for (long h = 0; h < call.heads; ++h)
      sdpa::attention_into(q.middleCols(h * call.d, call.d), k.middleCols(h * call.d, call.d),
                           v.middleCols(h * call.d, call.d), out.middleCols(h * call.d, call.d), options);
  };
  using Map = Eigen::Map<const sdpa::Matrix<float>>;
  const Map q(call.q, call.n, call.width), k(call.k, call.n, call.width), v(call.v, call.n, call.width);
  if (call.storage == DispatchStorage::f32) {
    Eigen::Map<sdpa::Matrix<float>> out(call.out, call.n, call.width);
    run(q, k, v, out);
  } else if (call.storage == DispatchStorage::bf16) {
    run_rounded<Eigen::bfloat16>(call, q, k, v, run);
  } else {
    run_rounded<Eigen::half>(call, q, k, v, run);
  }
  return sdpa::isa_name(sdpa::isa());
}
