// The vectorised exp2 and exp of simd/exp.hpp against the C library, over their whole range,
// on the build's widest ISA and on the width-1 fallback; and their behaviour at the edges.
#include "catch.hpp"
#include "support.hpp"

#include <sdpa/simd/simd.hpp>

#include <cstdio>


using namespace sdpa_test;

namespace {

/// Largest relative error of `approx` against `exact` over [lo, hi], sampled every `step`
/// and at random points in between, evaluated a vector at a time.
template <class V, class Approx, class Exact>
double max_relative_error(Approx approx, Exact exact, double lo, double hi, std::uint64_t salt) {
  std::vector<float> xs;
  for (double x = lo; x <= hi; x += (hi - lo) / 200000) xs.push_back(float(x));
  auto gen = rng(salt);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int i = 0; i < 200000; ++i) xs.push_back(float(dist(gen)));
  while (xs.size() % V::width) xs.push_back(float(lo));
  double worst = 0;
  float out[V::width];
  for (std::size_t i = 0; i < xs.size(); i += V::width) {
    approx(V::load(&xs[i])).store(out);
    for (int lane = 0; lane < V::width; ++lane) {
      const double want = exact(double(xs[i + std::size_t(lane)]));
      worst = std::max(worst, std::fabs(double(out[lane]) - want) / want);
    }
  }
  return worst;
}

template <class V>
float at(float x, V (*f)(V)) {
  float out[V::width];
  f(V::broadcast(x)).store(out);
  return out[0];
}

template <class V>
void check_exp_functions(const char* isa) {
  const double eps = std::numeric_limits<float>::epsilon();
  const auto exp2_v = [](V x) { return sdpa::simd::exp2(x); };
  const auto exp_v = [](V x) { return sdpa::simd::exp(x); };
  const double e2 = max_relative_error<V>(exp2_v, [](double x) { return std::exp2(x); }, -126.0, 127.0, 1);
  const double e1 = max_relative_error<V>(exp_v, [](double x) { return std::exp(x); }, -87.3, 88.0, 2);
  // The kernels use exp2 on [-126, 0] only; the README quotes these two lines.
  std::printf("simd exp (%s): max relative error exp2 %.3g (%.2f eps) on [-126, 127], exp %.3g (%.2f eps) on [-87.3, 88]\n",
              isa, e2, e2 / eps, e1, e1 / eps);
  CHECK(e2 <= 2 * eps);
  CHECK(e1 <= 2 * eps);

  const float inf = std::numeric_limits<float>::infinity();
  CHECK(at<V>(-inf, sdpa::simd::exp2) == 0.0f);  // a masked score weighs exactly nothing
  CHECK(at<V>(-inf, sdpa::simd::exp) == 0.0f);
  CHECK(at<V>(-200.0f, sdpa::simd::exp2) == 0.0f);  // below FLT_MIN: flushed to 0
  CHECK(at<V>(-127.0f, sdpa::simd::exp2) == 0.0f);
  CHECK(at<V>(-100.0f, sdpa::simd::exp) == 0.0f);
  CHECK(at<V>(0.0f, sdpa::simd::exp2) == 1.0f);
  CHECK(at<V>(-0.0f, sdpa::simd::exp) == 1.0f);
  CHECK(at<V>(200.0f, sdpa::simd::exp2) == inf);
  CHECK(at<V>(inf, sdpa::simd::exp) == inf);
  CHECK(std::isnan(at<V>(std::numeric_limits<float>::quiet_NaN(), sdpa::simd::exp2)));
  CHECK(std::isnan(at<V>(std::numeric_limits<float>::quiet_NaN(), sdpa::simd::exp)));
}

}  // namespace

TEST_CASE("vector exp2 and exp match the C library within 2 eps", "[exp]") {
#if SDPA_HAS_AVX512
  check_exp_functions<sdpa::simd::Vec<float, sdpa::simd::avx512>>("avx512");
#endif
#if SDPA_HAS_AVX2
  check_exp_functions<sdpa::simd::Vec<float, sdpa::simd::avx2>>("avx2");
#endif
#if SDPA_HAS_NEON
  check_exp_functions<sdpa::simd::Vec<float, sdpa::simd::neon>>("neon");
#endif
  check_exp_functions<sdpa::simd::Vec<float, sdpa::simd::scalar>>("scalar");
}

TEST_CASE("vector max and min keep NaN from their first operand on every ISA", "[exp]") {
  using V = sdpa::simd::Vec<float, sdpa::simd::native>;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float out[V::width];
  max(V::broadcast(nan), V::broadcast(1.0f)).store(out);
  CHECK(std::isnan(out[0]));
  min(V::broadcast(nan), V::broadcast(1.0f)).store(out);
  CHECK(std::isnan(out[0]));
  using S = sdpa::simd::Vec<float, sdpa::simd::scalar>;
  CHECK(std::isnan(max(S::broadcast(nan), S::broadcast(1.0f)).v));
  CHECK(max(S::broadcast(2.0f), S::broadcast(1.0f)).v == 2.0f);
}
