// Every mask kind on every path: boolean (true = may attend), additive bias, key lengths,
// causal (bottom-right aligned), broadcasting 1 x Nk forms, combinations, fully masked rows.
#include "catch.hpp"
#include "support.hpp"

namespace test_masks {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

struct Case {
  Matrix<double> Q, K, V;
  MaskSpec mask;
};

Case random_case(Index nq, Index nk, Index dk, Index dv, std::uint64_t salt) {
  auto gen = rng(salt);
  return {random_matrix<double>(nq, dk, gen, -2, 2), random_matrix<double>(nk, dk, gen, -2, 2),
          random_matrix<double>(nk, dv, gen), {}};
}

template <class T>
void check_case(const Case& c, const sdpa::BlockConfig& blocks = {}) {
  const Matrix<T> q = c.Q.cast<T>(), k = c.K.cast<T>(), v = c.V.cast<T>();
  const double scale = 1.0 / std::sqrt(double(c.Q.cols()));
  const Expected expected = reference(q, k, v, scale, c.mask);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options = c.mask.options(kernel);
    options.blocks = blocks;
    const Matrix<T> out = sdpa::attention(q, k, v, options);
    check_attention(out, expected, c.K.rows(), c.Q.cols(), name(kernel));
    // Fully masked rows are exactly zero, never NaN.
    for (Index i = 0; i < out.rows(); ++i)
      if (expected.weights.row(i).isZero(0)) {
        CAPTURE(name(kernel), i);
        CHECK((out.row(i).array() == T(0)).all());
      }
  }
}

void check_both(const Case& c) {
  check_case<float>(c);
  check_case<double>(c);
  check_case<float>(c, {3, 5});  // masks crossing small tiles
}

Matrix<bool> random_mask(Index rows, Index cols, std::mt19937_64& gen, double keep) {
  std::bernoulli_distribution coin(keep);
  Matrix<bool> m(rows, cols);
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = coin(gen);
  return m;
}

}  // namespace

TEST_CASE("boolean mask: true = may attend, rows with no true give zeros", "[masks]") {
  for (const double keep : {0.9, 0.5, 0.1}) {
    Case c = random_case(37, 71, 16, 12, 10 + std::uint64_t(keep * 10));
    auto gen = rng(20);
    c.mask.allowed = random_mask(37, 71, gen, keep);
    c.mask.allowed.row(3).setConstant(false);  // a fully masked row
    check_both(c);
  }
}

TEST_CASE("a mask can be a block of a larger matrix, even a temporary block expression", "[masks]") {
  Case c = random_case(5, 12, 8, 4, 25);
  auto gen = rng(26);
  const Matrix<bool> big = random_mask(9, 15, gen, 0.6);
  c.mask.allowed = big.block(2, 1, 5, 12);
  const Expected expected = reference(c.Q, c.K, c.V, 1.0 / std::sqrt(8.0), c.mask);
  sdpa::Options options;
  options.mask = big.block(2, 1, 5, 12);  // strided view of `big`, no copy
  for (const sdpa::Kernel kernel : all_kernels()) {
    options.kernel = kernel;
    check_attention(sdpa::attention(c.Q, c.K, c.V, options), expected, 12, 8, name(kernel));
  }
}

TEST_CASE("boolean mask broadcast from 1 x Nk (key padding)", "[masks]") {
  Case c = random_case(19, 40, 8, 8, 30);
  auto gen = rng(31);
  c.mask.allowed = random_mask(1, 40, gen, 0.6);
  check_both(c);
}

TEST_CASE("additive bias, finite and -inf, full and broadcast", "[masks]") {
  Case c = random_case(25, 33, 12, 7, 40);
  auto gen = rng(41);
  c.mask.bias = random_matrix<double>(25, 33, gen, -3, 3);
  c.mask.bias(4, 7) = -std::numeric_limits<double>::infinity();
  c.mask.bias.row(9).setConstant(-std::numeric_limits<double>::infinity());  // fully masked by bias
  check_both(c);
  c.mask.bias = random_matrix<double>(1, 33, gen, -3, 3);  // ALiBi-like per-key bias
  check_both(c);
}

TEST_CASE("a float bias works with double inputs and vice versa", "[masks]") {
  Case c = random_case(6, 9, 4, 4, 45);
  auto gen = rng(46);
  const Matrix<float> bias = random_matrix<float>(6, 9, gen, -1, 1);
  c.mask.bias = bias.cast<double>();
  const Expected expected = reference(c.Q, c.K, c.V, 0.5, c.mask);
  sdpa::Options options;
  options.bias = bias;
  for (const sdpa::Kernel kernel : all_kernels()) {
    options.kernel = kernel;
    check_attention(sdpa::attention(c.Q, c.K, c.V, options), expected, 9, 4, name(kernel));
  }
}

TEST_CASE("key lengths: per query, and one for all", "[masks]") {
  Case c = random_case(6, 50, 10, 10, 50);
  c.mask.lengths = {50, 0, 1, 17, 33, 49};  // 0: fully masked
  check_both(c);
  c.mask.lengths = {23};
  check_both(c);
}

TEST_CASE("causal is bottom-right aligned for every Nq, Nk", "[masks]") {
  // Nq < Nk: a chunk of new queries over a longer cache; Nq > Nk: leading rows see nothing.
  std::uint64_t salt = 60;
  for (const auto& [nq, nk] : {std::pair<Index, Index>{1, 30}, {5, 7}, {7, 4}, {30, 30}, {64, 100}, {100, 64}}) {
    Case c = random_case(nq, nk, 8, 6, salt++);
    c.mask.causal = true;
    check_both(c);
  }
}

TEST_CASE("all masks at once", "[masks]") {
  Case c = random_case(45, 60, 20, 9, 70);
  auto gen = rng(71);
  c.mask.causal = true;
  c.mask.allowed = random_mask(45, 60, gen, 0.7);
  c.mask.bias = random_matrix<double>(45, 60, gen, -2, 2);
  c.mask.lengths.assign(45, 0);
  for (Index i = 0; i < 45; ++i) c.mask.lengths[std::size_t(i)] = (i * 7) % 61;
  check_both(c);
}

}  // namespace test_masks
