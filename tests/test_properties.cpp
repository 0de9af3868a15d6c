// Properties that hold whatever the inputs: weights are a distribution, softmax ignores a
// shift of a row, attention is a set operation over keys and row-wise over queries.
#include "catch.hpp"
#include "support.hpp"

#include <algorithm>
#include <numeric>

namespace test_properties {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {
const Index kNq = 29, kNk = 43, kD = 24;
}

TEST_CASE("each row of weights sums to 1 and matches the reference", "[properties]") {
  auto gen = rng(1);
  const Matrix<double> Q = random_matrix<double>(kNq, kD, gen, -2, 2), K = random_matrix<double>(kNk, kD, gen, -2, 2);
  const Matrix<double> V = Matrix<double>::Zero(kNk, 1);
  for (const bool causal : {false, true}) {
    sdpa::Options options;
    options.causal = causal;
    MaskSpec mask;
    mask.causal = causal;
    const Expected expected = reference(Q, K, V, 1.0 / std::sqrt(double(kD)), mask);
    const Matrix<double> P = sdpa::attention_weights(Q, K, options);
    const Matrix<float> Pf = sdpa::attention_weights(Matrix<float>(Q.cast<float>()), Matrix<float>(K.cast<float>()), options);
    for (Index i = 0; i < kNq; ++i) {
      CAPTURE(causal, i);
      CHECK(std::fabs(P.row(i).sum() - 1.0) <= 1e-14);
      CHECK(std::fabs(Pf.row(i).sum() - 1.0f) <= 64 * std::numeric_limits<float>::epsilon());
      CHECK((P.row(i).array() >= 0).all());
      for (Index j = 0; j < kNk; ++j) CHECK(std::fabs(Wide(P(i, j)) - expected.weights(i, j)) <= 1e-13);
    }
  }
}

TEST_CASE("adding a constant to a row of scores changes nothing", "[properties]") {
  auto gen = rng(2);
  const Matrix<float> Q = random_matrix<float>(kNq, kD, gen), K = random_matrix<float>(kNk, kD, gen),
                      V = random_matrix<float>(kNk, kD, gen);
  Matrix<double> shift(kNq, kNk);  // a different constant per row, as a bias
  for (Index i = 0; i < kNq; ++i) shift.row(i).setConstant(double(i) * 3.0 - 40.0);
  const MaskSpec plain;
  const Expected expected = reference(Q, K, V, 1.0 / std::sqrt(double(kD)), plain);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    options.bias = shift;
    // The bias adds one rounding per score: the reference's magnitudes include it.
    MaskSpec shifted;
    shifted.bias = shift;
    const Expected with_shift = reference(Q, K, V, 1.0 / std::sqrt(double(kD)), shifted);
    const Matrix<float> out = sdpa::attention(Q, K, V, options);
    check_attention(out, with_shift, kNk, kD, name(kernel));
    Expected same = with_shift;
    same.out = expected.out;  // the unshifted result, within the shifted call's tolerance
    check_attention(out, same, kNk, kD, name(kernel));
  }
}

TEST_CASE("permuting keys together with their values changes nothing", "[properties]") {
  auto gen = rng(3);
  const Matrix<double> Q = random_matrix<double>(kNq, kD, gen), K = random_matrix<double>(kNk, kD, gen),
                       V = random_matrix<double>(kNk, 7, gen);
  std::vector<Index> order(kNk);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), gen);
  Matrix<double> Kp(kNk, kD), Vp(kNk, 7);
  for (Index j = 0; j < kNk; ++j) {
    Kp.row(j) = K.row(order[std::size_t(j)]);
    Vp.row(j) = V.row(order[std::size_t(j)]);
  }
  const Expected expected = reference(Q, K, V, 1.0 / std::sqrt(double(kD)), MaskSpec{});
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    check_attention(sdpa::attention(Q, Kp, Vp, options), expected, kNk, kD, name(kernel));
    const Matrix<float> out = sdpa::attention(Matrix<float>(Q.cast<float>()), Matrix<float>(Kp.cast<float>()),
                                              Matrix<float>(Vp.cast<float>()), options);
    check_attention(out, expected, kNk, kD, name(kernel));
  }
}

TEST_CASE("permuting queries permutes the output rows exactly", "[properties]") {
  auto gen = rng(4);
  const Matrix<float> Q = random_matrix<float>(kNq, kD, gen), K = random_matrix<float>(kNk, kD, gen),
                      V = random_matrix<float>(kNk, kD, gen);
  std::vector<Index> order(kNq);
  std::iota(order.begin(), order.end(), 0);
  std::shuffle(order.begin(), order.end(), gen);
  Matrix<float> Qp(kNq, kD);
  for (Index i = 0; i < kNq; ++i) Qp.row(i) = Q.row(order[std::size_t(i)]);
  for (const sdpa::Kernel kernel : {sdpa::Kernel::Blocked, sdpa::Kernel::Simd}) {
    // Each query row is computed alone in the tiled paths: the permutation is exact.
    sdpa::Options options;
    options.kernel = kernel;
    const Matrix<float> out = sdpa::attention(Q, K, V, options), out_p = sdpa::attention(Qp, K, V, options);
    for (Index i = 0; i < kNq; ++i) {
      CAPTURE(name(kernel), i);
      CHECK(out_p.row(i) == out.row(order[std::size_t(i)]));
    }
  }
}

}  // namespace test_properties
