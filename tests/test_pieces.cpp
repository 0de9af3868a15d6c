// The tiled kernels' parts, each on its own: the online softmax, the mask policy, the tiling.
#include "catch.hpp"
#include "support.hpp"

#include <sdpa/attention.hpp>

namespace test_pieces {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {
using Scalar1 = sdpa::simd::Vec<double, sdpa::simd::scalar>;
const auto libm_exp2 = [](Scalar1 x) { return Scalar1{std::exp2(x.v)}; };
}  // namespace

TEST_CASE("online softmax over tiles equals softmax over the whole row", "[pieces]") {
  auto gen = rng(1);
  const Index n = 50;
  const Matrix<double> s = random_matrix<double>(1, n, gen, -20, 20);
  for (const Index tile : {Index(1), Index(3), Index(7), Index(50)}) {
    sdpa::kernels::scalar::OnlineSoftmaxRow<Scalar1> row;
    std::vector<double> scratch;
    double value = 0;  // an accumulator of sum_j p_j * j, rescaled as the kernels do
    for (Index j0 = 0; j0 < n; j0 += tile) {
      const Index count = std::min(tile, n - j0);
      scratch.assign(s.data() + j0, s.data() + j0 + count);
      const double rescale = row.absorb(scratch.data(), count, libm_exp2);
      value *= rescale;
      for (Index c = 0; c < count; ++c) value += scratch[std::size_t(c)] * double(j0 + c);
    }
    // Direct base-2 softmax.
    const double m = s.maxCoeff();
    double sum = 0, expected = 0;
    for (Index j = 0; j < n; ++j) sum += std::exp2(s(0, j) - m);
    for (Index j = 0; j < n; ++j) expected += std::exp2(s(0, j) - m) / sum * double(j);
    CAPTURE(tile);
    CHECK(row.running_max == m);
    CHECK(std::fabs(value * row.normaliser() - expected) <= 1e-12 * n);
  }
}

TEST_CASE("online softmax: a fully masked row stays at zero weight, never NaN", "[pieces]") {
  sdpa::kernels::scalar::OnlineSoftmaxRow<Scalar1> row;
  const double inf = std::numeric_limits<double>::infinity();
  std::vector<double> tile{-inf, -inf, -inf};
  CHECK(row.absorb(tile.data(), 3, libm_exp2) == 1.0);
  CHECK(tile == std::vector<double>{0, 0, 0});
  CHECK(row.normaliser() == 0.0);
  // A later visible key starts the row; the rescale of the empty past is harmless (0 * 0).
  std::vector<double> next{-inf, 2.0};
  CHECK(row.absorb(next.data(), 2, libm_exp2) == 0.0);
  CHECK(next == std::vector<double>{0, 1});
  CHECK(row.normaliser() == 1.0);
}

TEST_CASE("mask policy: key_end combines causal and key lengths; apply masks and biases", "[pieces]") {
  sdpa::Options options;
  options.causal = true;
  {
    const sdpa::detail::MaskPolicy<double> policy(options, 3, 5, 1.0);  // bottom-right: row i sees j <= i + 2
    CHECK(policy.key_end(0) == 3);
    CHECK(policy.key_end(2) == 5);
    CHECK(!policy.elementwise());
  }
  {
    const sdpa::detail::MaskPolicy<double> policy(options, 5, 3, 1.0);  // Nq > Nk: rows 0, 1 see nothing
    CHECK(policy.key_end(0) == 0);
    CHECK(policy.key_end(1) == 0);
    CHECK(policy.key_end(2) == 1);
  }
  options.key_lengths = {2, 4, 9, 1};
  const Matrix<bool> allowed = (Matrix<int>(1, 9) << 1, 0, 1, 1, 1, 1, 1, 1, 1).finished().cast<bool>();
  const Matrix<double> bias = Matrix<double>::Constant(1, 9, 0.5);
  options.mask = allowed;
  options.bias = bias;
  const sdpa::detail::MaskPolicy<double> policy(options, 4, 9, 2.0);
  CHECK(policy.key_end(0) == 2);  // min(causal 6, length 2)
  CHECK(policy.key_end(2) == 8);  // causal
  CHECK(policy.elementwise());
  std::vector<double> s(9, 1.0);
  policy.apply(1, 0, 9, s.data());  // row 1: causal end 7, length 4, key 1 masked; bias 2 * 0.5
  const double inf = std::numeric_limits<double>::infinity();
  CHECK(s == std::vector<double>{2, -inf, 2, 2, -inf, -inf, -inf, -inf, -inf});
}

TEST_CASE("block sizes: defaults fit the caches, forced sizes are kept", "[pieces]") {
  constexpr Index kL1 = 32 * 1024;
  const auto t = sdpa::kernels::choose_blocks({}, 4096, 4096, 64, 64, 4, 64, 6, kL1);
  CHECK(t.key_rows == 64);                          // one fused microkernel width
  CHECK(t.key_rows * (64 + 64) * 4 <= kL1);         // K and V tiles in L1
  CHECK(t.query_rows == 48);                        // 8 microkernel heights
  const auto d16 = sdpa::kernels::choose_blocks({}, 4096, 4096, 16, 16, 4, 16, 6, kL1);
  CHECK(d16.key_rows == 256);                       // capped: 32 KiB would hold 256 keys exactly
  const auto d8_big_l1 = sdpa::kernels::choose_blocks({}, 4096, 4096, 8, 8, 4, 16, 6, 2 * kL1);
  CHECK(d8_big_l1.key_rows == 256);                // the cap holds for larger caches too
  const auto d64_big_l1 = sdpa::kernels::choose_blocks({}, 4096, 4096, 64, 64, 4, 16, 6, 2 * kL1);
  CHECK(d64_big_l1.key_rows == 128);                // a 64 KiB L1 holds twice the keys
  CHECK(sdpa::kernels::l1_data_cache_bytes() >= 4096);  // the OS's figure, or 32 KiB
  const auto small = sdpa::kernels::choose_blocks({}, 10, 10, 64, 64, 4, 64, 6);
  CHECK(small.query_rows == 6);  // short sequences still split into tiles for the threads
  CHECK(small.key_rows == 10);   // never wider than the keys
  const auto forced = sdpa::kernels::choose_blocks({3, 5}, 4096, 4096, 64, 64, 4, 64, 6);
  CHECK(forced.query_rows == 3);
  CHECK(forced.key_rows == 5);
  const auto clamped = sdpa::kernels::choose_blocks({100, 100}, 7, 9, 64, 64, 4, 64, 6);
  CHECK(clamped.query_rows == 7);
  CHECK(clamped.key_rows == 9);
}

TEST_CASE("Auto picks the measured fastest path for the type and shape", "[pieces]") {
  using sdpa::Kernel;
  using sdpa::detail::resolve_kernel;
  CHECK(resolve_kernel<float>(Kernel::Auto, 8, 16) == Kernel::Reference);  // tiny: no setup wins
  CHECK(resolve_kernel<float>(Kernel::Auto, sdpa::kernels::kDecodeRows, 4) == Kernel::Simd);  // decode kernels
  CHECK(resolve_kernel<float>(Kernel::Auto, sdpa::kernels::kDecodeRows + 1, 4) == Kernel::Reference);
  CHECK(resolve_kernel<float>(Kernel::Auto, 16, 16) == Kernel::Simd);
  CHECK(resolve_kernel<float>(Kernel::Auto, 4096, 4096) == Kernel::Simd);
  CHECK(resolve_kernel<double>(Kernel::Auto, 1024, 1024) == Kernel::Reference);  // 8 MiB of scores
  CHECK(resolve_kernel<double>(Kernel::Auto, 2048, 2048) == Kernel::Blocked);     // 32 MiB: keep memory O(N)
  CHECK(resolve_kernel<double>(Kernel::Simd, 64, 64) == Kernel::Blocked);         // no double microkernels
  CHECK(resolve_kernel<float>(Kernel::Blocked, 4, 4) == Kernel::Blocked);         // explicit choices stand
}

}  // namespace test_pieces
