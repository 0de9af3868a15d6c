// Hostile and careless input: views that repeat or overlap, outputs that alias inputs,
// absurd sizes, throwing thread pools, NaN, Inf and values at the edge of the float range.
// Every case here was found by a fuzzer or a sanitizer and failed before its fix.
#include "catch.hpp"
#include "support.hpp"

#include <climits>
#include <cstdint>
#include <stdexcept>

namespace test_hostile {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

using Map = Eigen::Map<Matrix<float>, 0, Eigen::OuterStride<>>;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr float kNaN = std::numeric_limits<float>::quiet_NaN();

template <class Call>
std::string invalid_message(Call&& call) {
  try {
    call();
  } catch (const std::invalid_argument& e) {
    return e.what();
  }
  return "";
}
#define REQUIRE_INVALID(call, fragment)                   \
  do {                                                    \
    const std::string message = invalid_message([&] { call; }); \
    INFO("message: " << message);                          \
    CHECK(message.find(fragment) != std::string::npos);    \
  } while (0)

/// Each output element's class: 0 finite, 1 NaN, 2 +inf, 3 -inf.
Matrix<int> classes(const Matrix<float>& m) {
  return m.unaryExpr([](float x) { return std::isnan(x) ? 1 : x == kInf ? 2 : x == -kInf ? 3 : 0; });
}

/// Runs every path on the same call; requires the same class per element and, where finite,
/// agreement with the reference path to a few ulps of the row's scale.
void require_paths_agree(const Matrix<float>& Q, const Matrix<float>& K, const Matrix<float>& V, sdpa::Options options,
                         float tolerance = 1e-5f) {
  options.kernel = sdpa::Kernel::Reference;
  const Matrix<float> expected = sdpa::attention(Q, K, V, options);
  for (const sdpa::Kernel kernel : {sdpa::Kernel::Blocked, sdpa::Kernel::Simd})
    for (const Index key_rows : {Index(0), Index(1), Index(3)}) {
      options.kernel = kernel;
      options.blocks.key_rows = key_rows;
      const Matrix<float> got = sdpa::attention(Q, K, V, options);
      CAPTURE(name(kernel), key_rows, expected, got);
      REQUIRE((classes(got).array() == classes(expected).array()).all());
      const Matrix<float> e = expected.unaryExpr([](float x) { return std::isfinite(x) ? x : 0.0f; });
      const Matrix<float> g = got.unaryExpr([](float x) { return std::isfinite(x) ? x : 0.0f; });
      CHECK(((g - e).array().abs() <= tolerance * (1 + e.array().abs())).all());
    }
}

}  // namespace

TEST_CASE("a Map with outer stride 0 repeats its row as an input and is refused as an output", "[hostile]") {
  auto gen = rng(81);
  const Matrix<float> row = random_matrix<float>(1, 8, gen), K = random_matrix<float>(6, 8, gen),
                      V = random_matrix<float>(6, 8, gen);
  const Eigen::Map<const Matrix<float>, 0, Eigen::OuterStride<>> broadcast(row.data(), 5, 8, Eigen::OuterStride<>(0));
  const Matrix<float> Q = row.replicate(5, 1);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    CAPTURE(name(kernel));
    CHECK(sdpa::attention(broadcast, K, V, options) == sdpa::attention(Q, K, V, options));
    const Eigen::Map<const Matrix<float>, 0, Eigen::OuterStride<>> k0(K.data(), 6, 8, Eigen::OuterStride<>(0)),
        v0(V.data(), 6, 8, Eigen::OuterStride<>(0));
    CHECK(sdpa::attention(Q, k0, v0, options) == sdpa::attention(Q, K.row(0).replicate(6, 1).eval(),
                                                                  V.row(0).replicate(6, 1).eval(), options));
  }
  float out[8];
  REQUIRE_INVALID(sdpa::attention_into(Q, K, V, Map(out, 5, 8, Eigen::OuterStride<>(0))), "row stride of 0");
}

TEST_CASE("outputs own their elements and touch no input", "[hostile]") {
  auto gen = rng(82);
  Matrix<float> Q = random_matrix<float>(4, 3, gen), K = random_matrix<float>(4, 3, gen), V = random_matrix<float>(4, 4, gen);
  Matrix<float> out = Matrix<float>::Constant(4, 4, 42.0f);
  sdpa::Options options;
  options.bias = out;  // the bias is still being read while out is written
  REQUIRE_INVALID(sdpa::attention_into(Q, K, V, out, options), "overlaps options.bias");
  CHECK((out.array() == 42.0f).all());

  Matrix<float> fresh(4, 4);
  Eigen::Map<sdpa::Vector<float>> lse_in_q(Q.data(), 4);
  REQUIRE_INVALID(sdpa::attention_into(Q, K, V, fresh, lse_in_q), "lse (4 entries) overlaps Q");

  float buffer[16];
  REQUIRE_INVALID(sdpa::attention_into(Q, K, V, Map(buffer, 4, 4, Eigen::OuterStride<>(2))), "its rows overlap");

  // batched: heads or batch items that share memory
  std::vector<float> q(2 * 2 * 4 * 3, 0.5f), o(2 * 2 * 4 * 3, 42.0f);
  const auto qv = sdpa::TensorView<const float>::bhnd(q.data(), 2, 2, 4, 3);
  for (const auto& [batch_stride, head_stride] : {std::pair<Index, Index>{24, 0}, {0, 12}, {24, 6}}) {
    sdpa::TensorView<float> ov = sdpa::TensorView<float>::bhnd(o.data(), 2, 2, 4, 3);
    ov.batch_stride = batch_stride;
    ov.head_stride = head_stride;
    CAPTURE(batch_stride, head_stride);
    REQUIRE_INVALID(sdpa::attention(qv, qv, qv, ov), "give two elements one place");
  }
  CHECK(std::all_of(o.begin(), o.end(), [](float x) { return x == 42.0f; }));
}

TEST_CASE("negative and absurd TensorView sizes are refused", "[hostile]") {
  std::vector<float> buffer(64, 1.0f), out(64);
  auto q = sdpa::TensorView<const float>::bhnd(buffer.data(), 1, 1, 2, 8);
  auto v = q;
  auto o = sdpa::TensorView<float>::bhnd(out.data(), 1, 1, 2, 8);
  auto bad = q;
  bad.features = -8;
  REQUIRE_INVALID(sdpa::attention(bad, bad, v, o), "sizes must not be negative");
  bad = q;
  bad.tokens = -2;
  REQUIRE_INVALID(sdpa::attention(q, bad, bad, o), "sizes must not be negative");
  bad = q;
  bad.batch = 2;
  bad.batch_stride = PTRDIFF_MAX / 2;
  auto o2 = sdpa::TensorView<float>::bhnd(out.data(), 2, 1, 2, 8);
  REQUIRE_INVALID(sdpa::attention(bad, bad, bad, o2), "too large to address");
  // Empty views with no data at all: nothing to do, and no arithmetic on a null pointer.
  const sdpa::TensorView<const float> none{nullptr, 3, 2, 0, 8, 5, 7, 8};
  const sdpa::TensorView<float> none_out{nullptr, 3, 2, 0, 8, 5, 7, 8};
  sdpa::attention(none, none, none, none_out);
}

TEST_CASE("KVCache sizes that cannot be addressed, heads out of range", "[hostile]") {
  REQUIRE_INVALID(sdpa::KVCache<float>(1, 1, 64, 64, Index(1) << 62), "more elements than memory can address");
  REQUIRE_INVALID(sdpa::KVCache<float>(Index(1) << 40, 8, 64, 64, Index(1) << 20), "more elements than memory");
  sdpa::KVCache<float> cache(1, 2, 4, 4, 8);
  REQUIRE_INVALID((void)cache.keys(0, 2), "head 2 is outside [0, 2)");
  REQUIRE_INVALID((void)cache.values(0, -1), "head -1 is outside [0, 2)");
  REQUIRE_INVALID(cache.truncate(0, 1), "cannot truncate it to 1");
}

TEST_CASE("SelfAttention::step changes nothing when it fails, so a retry gives the same result", "[hostile]") {
  const auto layer = sdpa::SelfAttention<float>::random(16, 2, 5);
  auto gen = rng(85);
  const Matrix<float> prompt = random_matrix<float>(6, 16, gen), token = random_matrix<float>(1, 16, gen);
  sdpa::KVCache<float> cache(1, 2, 8, 8, 16), clean(1, 2, 8, 8, 16);
  (void)layer.step(prompt, cache);
  (void)layer.step(prompt, clean);
  sdpa::Options failing;
  failing.parallel_for = [](Index, const std::function<void(Index, Index)>&) { throw std::runtime_error("pool down"); };
  CHECK_THROWS_AS(layer.step(token, cache, 0, failing), std::runtime_error);
  CHECK(cache.length(0) == 6);
  CHECK(layer.step(token, cache) == layer.step(token, clean));
  // A step of no tokens: an empty result, an unchanged cache (and no pointer arithmetic on
  // the null data of an empty matrix, which UBSan reported).
  CHECK(layer.step(Matrix<float>(0, 16), cache).rows() == 0);
  CHECK(cache.length(0) == 7);
}

TEST_CASE("attention_weights_from_lse: a row range that would overflow", "[hostile]") {
  const Matrix<float> Q = Matrix<float>::Ones(4, 2), K = Matrix<float>::Ones(3, 2);
  const sdpa::Vector<float> lse = sdpa::Vector<float>::Zero(2);
  REQUIRE_INVALID((void)sdpa::attention_weights_from_lse(Q, K, lse, std::numeric_limits<Index>::max() - 1),
                  "are not all rows of Q");
}

TEST_CASE("threads: bounded, and an exception crosses the parallel region", "[hostile]") {
  const Matrix<float> Q = Matrix<float>::Ones(4, 2);
  sdpa::Options options;
  options.threads = INT_MAX;
  REQUIRE_INVALID((void)sdpa::attention(Q, Q, Q, options), "options.threads is 2147483647");
  options.threads = 2;
  std::atomic<int> ran{0};
  CHECK_THROWS_AS(sdpa::detail::parallel_for(64, options,
                                             [&](Index first, Index end) {
                                               ++ran;
                                               if (first <= 3 && 3 < end) throw std::bad_alloc();
                                             }),
                  std::bad_alloc);  // was std::terminate with OpenMP and threads >= 2
  CHECK(ran >= 1);
}

TEST_CASE("scale must stay positive and finite in the element type", "[hostile]") {
  const Matrix<float> Q = Matrix<float>::Ones(2, 2);
  sdpa::Options options;
  for (const double scale : {1e300, 1e-300, 3e38}) {
    options.scale = scale;
    CAPTURE(scale);
    REQUIRE_INVALID((void)sdpa::attention(Q, Q, Q, options), "as a 32-bit float too");
  }
  const Matrix<double> Qd = Matrix<double>::Ones(2, 2);
  options.scale = 1e300;
  CHECK(sdpa::attention(Qd, Qd, Qd, options).allFinite());
}

TEST_CASE("masks made from temporaries are kept alive", "[hostile]") {
  const auto make_mask = [] {
    Matrix<bool> m = Matrix<bool>::Constant(5, 6, true);
    m(0, 0) = m(1, 3) = m(2, 5) = false;
    return m;
  };
  const auto make_bias = []() -> Matrix<float> { return Matrix<float>::Constant(6, 6, -0.5f); };
  auto gen = rng(89);
  const Matrix<float> Q = random_matrix<float>(3, 4, gen), K = random_matrix<float>(6, 4, gen),
                      V = random_matrix<float>(6, 2, gen);
  const Matrix<bool> kept = make_mask().topRows(3);
  const Matrix<float> kept_bias = make_bias().topRows(3);
  sdpa::Options temporary, lvalue;
  temporary.mask = make_mask().topRows(3);  // dangled before: the block viewed a destroyed matrix
  temporary.bias = make_bias().topRows(3);
  lvalue.mask = kept;
  lvalue.bias = kept_bias;
  CHECK(sdpa::attention(Q, K, V, temporary) == sdpa::attention(Q, K, V, lvalue));
}

// ---- one contract for NaN, Inf and out-of-range input (README, "NaN, Inf and out-of-range input")

TEST_CASE("a row whose every score is NaN is NaN on every path", "[hostile]") {
  Matrix<float> Q = Matrix<float>::Ones(3, 4), K = Matrix<float>::Ones(5, 4), V = Matrix<float>::Ones(5, 2);
  Q(1, 2) = kNaN;
  require_paths_agree(Q, K, V, {});
  const Matrix<float> out = sdpa::attention(Q, K, V);
  CHECK(out.row(1).array().isNaN().all());
  CHECK(out.row(0).allFinite());
}

TEST_CASE("a -inf bias forbids a pair whatever its score, NaN and Inf included", "[hostile]") {
  Matrix<float> Q = Matrix<float>::Ones(3, 4), K = Matrix<float>::Ones(5, 4), V = Matrix<float>::Ones(5, 2);
  K(2, 0) = kNaN;
  K(3, 1) = kInf;
  Matrix<float> bias = Matrix<float>::Zero(3, 5);
  bias.col(2).setConstant(-kInf);
  bias.col(3).setConstant(-kInf);
  bias.row(2).setConstant(-kInf);  // row 2: fully masked, exactly 0
  sdpa::Options options;
  options.bias = bias;
  require_paths_agree(Q, K, V, options);
  const Matrix<float> out = sdpa::attention(Q, K, V, options);
  CHECK(out.topRows(2).isApprox(Matrix<float>::Ones(2, 2)));
  CHECK((out.row(2).array() == 0.0f).all());
}

TEST_CASE("keys that a query may not see, or that weigh 0, never reach it, whatever V holds", "[hostile]") {
  auto gen = rng(92);
  const Matrix<float> Q = random_matrix<float>(6, 8, gen), K = random_matrix<float>(9, 8, gen);
  Matrix<float> V = random_matrix<float>(9, 4, gen);
  V(8, 1) = kNaN;  // the last key: hidden from every row but the last by the causal mask
  V(7, 2) = kInf;
  sdpa::Options options;
  options.causal = true;
  options.key_lengths = {7, 7, 7, 7, 7, 9};
  require_paths_agree(Q, K, V, options);
  const Matrix<float> out = sdpa::attention(Q, K, V, options);
  CHECK(out.topRows(5).allFinite());
  CHECK(std::isnan(out(5, 1)));
  // A key whose weight underflows to 0 adds nothing either.
  Matrix<float> bias = Matrix<float>::Zero(1, 9);
  bias(0, 8) = -1e4f;
  sdpa::Options underflow;
  underflow.bias = bias;
  require_paths_agree(Q, K, V.topRows(9), underflow);
}

TEST_CASE("scores at the edge of the float range: every path gives the same answer", "[hostile]") {
  auto gen = rng(93);
  const Matrix<float> V = random_matrix<float>(6, 3, gen);
  Matrix<float> Q = Matrix<float>::Ones(4, 2), K = Matrix<float>::Ones(6, 2);
  Q(0, 0) = 1e19f, K(1, 0) = 1e19f;  // a dot product of 1e38 before scaling, 7e37 after
  Q(1, 0) = 2e19f, K(2, 0) = 1.6e19f;  // 2.2e38 after scaling: finite in base e, past FLT_MAX in base 2
  Q(2, 1) = 1e30f, K(5, 1) = 1e19f;    // a +inf score (against key 5): the row is NaN
  Q(3, 1) = -1e19f, K(4, 1) = 1.1e19f;  // a score of -1.2e38 beside ordinary ones
  sdpa::Options options;
  options.scale = 0.7;
  require_paths_agree(Q, K, V, options);
  Matrix<float> bias = Matrix<float>::Constant(4, 6, -3e38f);  // every score -3e38: a finite softmax
  options.bias = bias;
  require_paths_agree(Matrix<float>::Ones(4, 2), K, V, options);
  const Matrix<float> out = sdpa::attention(Matrix<float>::Ones(4, 2), K, V, options);
  CHECK(out.allFinite());
}

TEST_CASE("a row of 2^25 keys keeps its precision on the tiled paths", "[long]") {
  const Index nk = Index(1) << 25;
  const Matrix<float> Q = Matrix<float>::Ones(8, 1), K = Matrix<float>::Ones(nk, 1), V = Matrix<float>::Ones(nk, 1);
  // Blocked only: Simd runs the same loop (TiledHead), but at d_v = 1 it would copy V padded
  // to a whole vector, gigabytes here.
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Blocked;
  options.blocks.query_rows = 2;  // 4 query tiles: one pass over the keys each, no key split
  const Matrix<float> out = sdpa::attention(Q, K, V, options);
  CHECK((out.array() - 1.0f).abs().maxCoeff() <= 1e-6f);  // was 0.5: a float sum stops at 2^24
}

// Found by the fuzzer (tests/fuzz) once the cases above were fixed.

TEST_CASE("a bias at a pair the boolean mask forbids is never looked at", "[hostile]") {
  const Matrix<float> Q = Matrix<float>::Ones(2, 2), K = Matrix<float>::Ones(2, 2);
  Matrix<float> V(2, 1);
  V << 5.0f, 7.0f;
  Matrix<bool> mask(1, 2);
  mask << true, false;
  for (const float bad : {kNaN, kInf}) {
    Matrix<float> bias(1, 2);
    bias << 0.0f, bad;
    sdpa::Options options;
    options.mask = mask;
    options.bias = bias;
    require_paths_agree(Q, K, V, options);
    CHECK((sdpa::attention(Q, K, V, options).array() == 5.0f).all());  // was NaN: -inf + NaN
  }
}

TEST_CASE("batched calls with no keys or no queries are valid", "[hostile]") {
  std::vector<float> q(2 * 3 * 4, 1.0f), out(2 * 3 * 4, 42.0f);
  const bool mask_storage[1] = {true};
  const auto qv = sdpa::TensorView<const float>::bhnd(q.data(), 1, 2, 3, 4);
  const auto none = sdpa::TensorView<const float>::bhnd(q.data(), 1, 2, 0, 4);
  sdpa::Options options;
  options.batch_mask = sdpa::TensorView<const bool>::bhnd(mask_storage, 1, 2, 3, 0);  // [1, H, Nq, Nk = 0]
  sdpa::attention(qv, none, none, sdpa::TensorView<float>::bhnd(out.data(), 1, 2, 3, 4), options);
  CHECK(std::all_of(out.begin(), out.end(), [](float x) { return x == 0.0f; }));  // was "too large to address"
  const float bias_storage[3] = {0, 0, 0};
  sdpa::Options with_bias;
  with_bias.batch_bias = sdpa::TensorView<const float>::bhnd(bias_storage, 1, 1, 1, 3);
  sdpa::attention(none, qv, qv, sdpa::TensorView<float>::bhnd(out.data(), 1, 2, 0, 4), with_bias);  // was "overlaps"
}

TEST_CASE("SelfAttention::random refuses a negative width", "[hostile]") {
  REQUIRE_INVALID((void)sdpa::SelfAttention<float>::random(-4, 2, 1), "d_model -4");  // was an Eigen assertion
}

TEST_CASE("an output may not overlap an input that is read through a copy", "[hostile]") {
  Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor> V = Eigen::MatrixXf::Ones(4, 2);
  const Matrix<float> Q = Matrix<float>::Ones(3, 2), K = Matrix<float>::Ones(4, 2);
  // V is column-major, so the kernels read a row-major copy; out still must not write into V.
  REQUIRE_INVALID(sdpa::attention_into(Q, K, V, Map(V.data(), 3, 2, Eigen::OuterStride<>(2))), "overlaps V");
  CHECK((V.array() == 1.0f).all());
}

}  // namespace test_hostile
