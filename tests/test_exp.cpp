// The vectorised exp2 and exp of simd/exp-inl.hpp against the C library, over their whole
// range, and their behaviour at the edges, for the ISA under test (SDPA_ISA; CTest runs this
// file once per ISA the build has).
#include "catch.hpp"
#include "support.hpp"

#include <sdpa/attention.hpp>

#include <cstdio>

namespace test_exp {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

using Elementwise = void (*)(const float*, float*, Index);

/// `f` over xs, padded to whole vectors.
std::vector<float> apply(Elementwise f, std::vector<float> xs, int width) {
  const std::size_t n = xs.size();
  while (xs.size() % std::size_t(width)) xs.push_back(0.0f);
  std::vector<float> out(xs.size());
  f(xs.data(), out.data(), Index(xs.size()));
  out.resize(n);
  return out;
}

/// Largest relative error of `approx` against `exact` over [lo, hi], sampled every `step`
/// and at random points in between.
template <class Exact>
double max_relative_error(Elementwise approx, int width, Exact exact, double lo, double hi, std::uint64_t salt) {
  std::vector<float> xs;
  for (double x = lo; x <= hi; x += (hi - lo) / 200000) xs.push_back(float(x));
  auto gen = rng(salt);
  std::uniform_real_distribution<double> dist(lo, hi);
  for (int i = 0; i < 200000; ++i) xs.push_back(float(dist(gen)));
  const std::vector<float> out = apply(approx, xs, width);
  double worst = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) {
    const double want = exact(double(xs[i]));
    worst = std::max(worst, std::fabs(double(out[i]) - want) / want);
  }
  return worst;
}

float at(Elementwise f, int width, float x) { return apply(f, {x}, width)[0]; }

}  // namespace

TEST_CASE("vector exp2 and exp match the C library within 2 eps", "[exp]") {
  const sdpa::kernels::MicrokernelSet mk = sdpa::kernels::microkernels(sdpa::isa());
  const double eps = std::numeric_limits<float>::epsilon();
  const double e2 = max_relative_error(mk.exp2, mk.width, [](double x) { return std::exp2(x); }, -126.0, 127.0, 1);
  const double e1 = max_relative_error(mk.exp, mk.width, [](double x) { return std::exp(x); }, -87.3, 88.0, 2);
  // The kernels use exp2 on [-126, 0] only; the README quotes these two lines.
  std::printf("simd exp (%s): max relative error exp2 %.3g (%.2f eps) on [-126, 127], exp %.3g (%.2f eps) on [-87.3, 88]\n",
              sdpa::isa_name(sdpa::isa()), e2, e2 / eps, e1, e1 / eps);
  CHECK(e2 <= 2 * eps);
  CHECK(e1 <= 2 * eps);

  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const int w = mk.width;
  CHECK(at(mk.exp2, w, -inf) == 0.0f);  // a masked score weighs exactly nothing
  CHECK(at(mk.exp, w, -inf) == 0.0f);
  CHECK(at(mk.exp2, w, -200.0f) == 0.0f);  // below FLT_MIN: flushed to 0
  CHECK(at(mk.exp2, w, -127.0f) == 0.0f);
  CHECK(at(mk.exp, w, -100.0f) == 0.0f);
  CHECK(at(mk.exp2, w, 0.0f) == 1.0f);
  CHECK(at(mk.exp, w, -0.0f) == 1.0f);
  CHECK(at(mk.exp2, w, 200.0f) == inf);
  CHECK(at(mk.exp, w, inf) == inf);
  CHECK(std::isnan(at(mk.exp2, w, nan)));
  CHECK(std::isnan(at(mk.exp, w, nan)));
}

TEST_CASE("vector max and min keep NaN from their first operand", "[exp]") {
  const sdpa::kernels::MicrokernelSet mk = sdpa::kernels::microkernels(sdpa::isa());
  const float nan = std::numeric_limits<float>::quiet_NaN();
  CHECK(std::isnan(at(mk.max_with_one, mk.width, nan)));
  CHECK(std::isnan(at(mk.min_with_one, mk.width, nan)));
  CHECK(at(mk.max_with_one, mk.width, 2.0f) == 2.0f);
  CHECK(at(mk.max_with_one, mk.width, -2.0f) == 1.0f);
  CHECK(at(mk.min_with_one, mk.width, -2.0f) == -2.0f);
}

TEST_CASE("vector tanh (the soft cap's) is within 3 eps of the C library, absolutely", "[exp]") {
  const sdpa::kernels::MicrokernelSet mk = sdpa::kernels::microkernels(sdpa::isa());
  const double eps = std::numeric_limits<float>::epsilon();
  std::vector<float> xs;
  for (double x = -20; x <= 20; x += 40.0 / 400000) xs.push_back(float(x));
  for (float x = 1e-30f; x < 1; x *= 1.01f) xs.push_back(x), xs.push_back(-x);  // near 0, where 1 - e cancels
  const std::vector<float> out = apply(mk.tanh, xs, mk.width);
  double worst = 0;
  for (std::size_t i = 0; i < xs.size(); ++i) worst = std::max(worst, std::fabs(double(out[i]) - std::tanh(double(xs[i]))));
  // The README quotes this line.
  std::printf("simd tanh (%s): max absolute error %.3g (%.2f eps) on [-20, 20]\n", sdpa::isa_name(sdpa::isa()), worst,
              worst / eps);
  CHECK(worst <= 3 * eps);
  const float inf = std::numeric_limits<float>::infinity();
  CHECK(at(mk.tanh, mk.width, inf) == 1.0f);
  CHECK(at(mk.tanh, mk.width, -inf) == -1.0f);
  CHECK(at(mk.tanh, mk.width, 0.0f) == 0.0f);
  CHECK(std::isnan(at(mk.tanh, mk.width, std::numeric_limits<float>::quiet_NaN())));
}

}  // namespace test_exp
