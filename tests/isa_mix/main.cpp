// tests/isa_mix/main.cpp - one program, three translation units built for three ISAs (see
// CMakeLists.txt): each must run the kernels it was built for and match a double-precision
// reference, whatever order the objects are linked in. Before ISA-tagged namespaces, the
// linker kept one body of each shared inline function and the program crashed.
#include "attend.inc"

#include <cmath>
#include <cstdio>
#include <limits>
#include <random>

SDPA_MIX_ATTEND(attend_baseline_build)

namespace {

std::vector<double> reference(const Problem& p) {  // plain loops, no sdpa
  std::vector<double> out(std::size_t(p.n * p.d), 0.0);
  for (int i = 0; i < p.n; ++i) {
    std::vector<double> s(std::size_t(i + 1));
    double m = -std::numeric_limits<double>::infinity(), sum = 0;
    for (int j = 0; j <= i; ++j) {
      double dot = 0;
      for (int e = 0; e < p.d; ++e) dot += double(p.q[std::size_t(i * p.d + e)]) * p.k[std::size_t(j * p.d + e)];
      s[std::size_t(j)] = dot / std::sqrt(double(p.d));
      m = std::max(m, s[std::size_t(j)]);
    }
    for (int j = 0; j <= i; ++j) sum += (s[std::size_t(j)] = std::exp(s[std::size_t(j)] - m));
    for (int j = 0; j <= i; ++j)
      for (int e = 0; e < p.d; ++e)
        out[std::size_t(i * p.d + e)] += s[std::size_t(j)] / sum * p.v[std::size_t(j * p.d + e)];
  }
  return out;
}

bool check(const char* build, const Result& r, const std::string& expected_isa, const std::vector<double>& want) {
  double worst = 0;
  for (std::size_t i = 0; i < want.size(); ++i) worst = std::max(worst, std::fabs(double(r.out[i]) - want[i]));
  const bool ok = r.isa == expected_isa && r.out.size() == want.size() && worst < 1e-5;
  std::printf("%-28s ran %-7s (expected %-7s) max |error| %.2g: %s\n", build, r.isa.c_str(), expected_isa.c_str(),
              worst, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace

int main() {
  Problem p;
  std::mt19937 gen(7);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  for (auto* m : {&p.q, &p.k, &p.v})
    for (int i = 0; i < p.n * p.d; ++i) m->push_back(dist(gen));
  const std::vector<double> want = reference(p);
  const std::string widest = sdpa::cpu_supports(sdpa::Isa::avx512) ? "avx512" : "avx2";
  bool ok = check("-march=x86-64 (this file)", attend_baseline_build(p), "scalar", want);
  ok &= check("-march=x86-64 SDPA_DISPATCH", attend_dispatch_build(p), widest, want);
  ok &= check("-march=x86-64-v3", attend_avx2_build(p), "avx2", want);
  ok &= check("-march=x86-64 (again)", attend_baseline_build(p), "scalar", want);
  return ok ? 0 : 1;
}
