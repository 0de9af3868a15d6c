// The model variants (sliding windows, ALiBi, soft-capping, sinks) on every path, alone and
// combined with each other and with causal, masks, biases, key lengths and GQA, against the
// long-double reference of support.hpp (which implements each plainly); the window at its
// boundaries; sinks with fully masked rows; LSE, merging and weights with every variant.
#include "catch.hpp"
#include "support.hpp"

namespace test_variants {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

const double kInf = std::numeric_limits<double>::infinity();

struct Case {
  Matrix<double> Q, K, V;
  MaskSpec mask;
};

Case random_case(Index nq, Index nk, Index dk, Index dv, std::mt19937_64& gen) {
  return {random_matrix<double>(nq, dk, gen, -2, 2), random_matrix<double>(nk, dk, gen, -2, 2),
          random_matrix<double>(nk, dv, gen), {}};
}

/// Every path (and tile sizes), in T, against the reference: outputs, LSEs, and exact zeros
/// for rows that see no key.
template <class T>
void check_case(const Case& c, const sdpa::BlockConfig& blocks, const std::string& what) {
  const Matrix<T> q = c.Q.cast<T>(), k = c.K.cast<T>(), v = c.V.cast<T>();
  const double scale = 1.0 / std::sqrt(double(c.Q.cols()));
  const Expected expected = reference(q, k, v, scale, c.mask);
  for (const sdpa::Kernel kernel : all_kernels()) {
    CAPTURE(what, name(kernel), blocks.query_rows, blocks.key_rows);
    sdpa::Options options = c.mask.options(kernel);
    options.blocks = blocks;
    Matrix<T> out(q.rows(), v.cols());
    sdpa::Vector<T> lse(q.rows());
    sdpa::attention_into(q, k, v, out, lse, options);
    check_attention(out, expected, c.K.rows(), c.Q.cols(), what + " " + name(kernel));
    for (Index i = 0; i < out.rows(); ++i) {
      CAPTURE(i);
      const Wide want = expected.lse[std::size_t(i)];
      if (std::isinf(double(want))) {
        CHECK(lse(i) == -std::numeric_limits<T>::infinity());
      } else {
        CHECK(std::fabs(Wide(lse(i)) - want) <= 64 * Wide(std::numeric_limits<T>::epsilon()) * (1 + std::fabs(want) +
                                                                                              expected.score_magnitude[std::size_t(i)]));
      }
      if (expected.weights.row(i).isZero(0)) CHECK((out.row(i).array() == T(0)).all());
    }
  }
}

/// A random combination of every variant and mask, drawn from `gen`.
MaskSpec random_spec(Index nq, Index nk, std::mt19937_64& gen) {
  std::uniform_int_distribution<int> coin(0, 1), side(-1, int(nk) + 2);
  std::uniform_real_distribution<double> real(-1, 1);
  MaskSpec m;
  m.causal = coin(gen);
  if (coin(gen)) m.window_left = side(gen);
  if (coin(gen)) m.window_right = std::min<Index>(side(gen), coin(gen) ? 0 : nk);
  if (coin(gen)) m.alibi = true, m.slope = 0.5 * (real(gen) + 1);
  if (coin(gen)) m.softcap = 0.5 + 4 * (real(gen) + 1);
  if (coin(gen)) m.has_sink = true, m.sink = 2 * real(gen);
  switch (std::uniform_int_distribution<int>(0, 5)(gen)) {  // and, sometimes, one of the masks
    case 0: {
      std::bernoulli_distribution keep(0.7);
      m.allowed.resize(coin(gen) ? 1 : nq, nk);
      for (Index e = 0; e < m.allowed.size(); ++e) m.allowed.data()[e] = keep(gen);
      break;
    }
    case 1:
      m.bias = random_matrix<double>(coin(gen) ? 1 : nq, nk, gen);
      break;
    case 2:
      m.lengths = {std::uniform_int_distribution<Index>(0, nk)(gen)};
      break;
    default: break;
  }
  return m;
}

std::string describe(const Case& c) {
  const MaskSpec& m = c.mask;
  std::ostringstream s;
  s << c.Q.rows() << "x" << c.K.rows() << " d" << c.Q.cols() << "/" << c.V.cols() << (m.causal ? " causal" : "")
    << " window(" << m.window_left << "," << m.window_right << ")" << (m.alibi ? " alibi " : "")
    << (m.alibi ? std::to_string(m.slope) : "") << (m.softcap > 0 ? " softcap " + std::to_string(m.softcap) : "")
    << (m.has_sink ? " sink " + std::to_string(m.sink) : "") << (m.allowed.size() ? " mask" : "")
    << (m.bias.size() ? " bias" : "") << (m.lengths.empty() ? "" : " lengths");
  return s.str();
}

}  // namespace

TEST_CASE("variants, in random combinations, match the reference on every path and tile size", "[variants]") {
  auto gen = rng(900);
  const Index sizes[] = {1, 2, 7, 16, 33, 70};
  std::uniform_int_distribution<int> pick(0, 5);
  for (int trial = 0; trial < 24; ++trial) {  // (each trial runs every path at three tile sizes)
    const Index nq = sizes[pick(gen)], nk = sizes[pick(gen)];
    const Index dk = std::uniform_int_distribution<Index>(1, 3)(gen) * 16, dv = trial % 3 == 0 ? 24 : dk;
    Case c = random_case(nq, nk, dk, dv, gen);
    c.mask = random_spec(nq, nk, gen);
    const std::string what = describe(c);
    check_case<float>(c, {}, what);
    check_case<float>(c, trial % 2 ? sdpa::BlockConfig{3, 5} : sdpa::BlockConfig{1, 1}, what);  // edges in small tiles
    check_case<double>(c, {2, 3}, what);
  }
}

TEST_CASE("a window at every boundary", "[variants]") {
  auto gen = rng(901);
  const Index nq = 40, nk = 57;  // i' = i + 17
  Case c = random_case(nq, nk, 16, 16, gen);
  const std::pair<Index, Index> windows[] = {
      {0, 0},            // each query sees the key at its own position only
      {0, -1},           // left = 0: that key and everything after
      {-1, 0},           // right = 0 alone: causal
      {3, 0},            // a band narrower than a tile
      {5, 2},            // both sides
      {nk + 100, -1},    // wider than the sequence
      {-1, nk + 100},
      {200, 200},
  };
  for (const auto& [left, right] : windows)
    for (const bool causal : {false, true}) {
      c.mask = {};
      c.mask.causal = causal;
      c.mask.window_left = left;
      c.mask.window_right = right;
      const std::string what = describe(c);
      check_case<float>(c, {}, what);
      check_case<float>(c, {4, 16}, what);
      check_case<double>(c, {7, 3}, what);
    }
  // Queries beyond the keys' reach: with Nq > Nk some rows sit before every key.
  Case wide = random_case(30, 9, 16, 16, gen);
  wide.mask.window_left = 2;
  wide.mask.window_right = 1;
  check_case<float>(wide, {}, describe(wide));
  check_case<float>(wide, {3, 2}, describe(wide));
}

TEST_CASE("a sink joins the denominator: rows sum below 1, fully masked rows give 0 with LSE = sink", "[variants]") {
  auto gen = rng(902);
  Case c = random_case(20, 33, 16, 16, gen);
  c.mask.has_sink = true;
  c.mask.sink = 1.5;
  c.mask.lengths = {33};
  c.mask.allowed = Matrix<bool>::Constant(20, 33, true);
  c.mask.allowed.row(4).setConstant(false);  // sees nothing: out 0, lse = sink
  check_case<float>(c, {}, "sink with a fully masked row");
  check_case<float>(c, {3, 4}, "sink with a fully masked row, small tiles");
  check_case<double>(c, {}, "sink with a fully masked row, double");

  const sdpa::Options options = c.mask.options();
  const Matrix<double> weights = sdpa::attention_weights(c.Q, c.K, options);
  CHECK(weights.row(4).isZero(0));
  for (Index i = 0; i < 20; ++i)
    if (i != 4) CHECK(weights.row(i).sum() < 1.0);
  Matrix<double> out(20, 16);
  sdpa::Vector<double> lse(20);
  sdpa::attention_into(c.Q, c.K, c.V, out, lse, options);
  CHECK(lse(4) == 1.5);
  CHECK(out.row(4).isZero(0));
  // The weights from the LSE (which includes the sink) are the weights.
  CHECK((sdpa::attention_weights_from_lse(c.Q, c.K, lse, 0, options) - weights).cwiseAbs().maxCoeff() < 1e-14);
}

TEST_CASE("merging pieces with variants is exact when one piece carries the sink", "[variants][lse]") {
  auto gen = rng(903);
  const Index nq = 9, nk = 50, split = 23;
  const Matrix<double> Q = random_matrix<double>(nq, 16, gen, -2, 2), K = random_matrix<double>(nk, 16, gen, -2, 2),
                       V = random_matrix<double>(nk, 16, gen);
  sdpa::Options whole;
  whole.softcap = 3.0;
  whole.sinks = {0.7};
  Matrix<double> want(nq, 16);
  sdpa::Vector<double> want_lse(nq);
  sdpa::attention_into(Q, K, V, want, want_lse, whole);
  for (const sdpa::Kernel kernel : all_kernels()) {
    CAPTURE(name(kernel));
    sdpa::Options with_sink = whole, without = whole;
    with_sink.kernel = without.kernel = kernel;
    without.sinks.clear();  // the sink is counted once: in the first piece only
    Matrix<double> a(nq, 16), b(nq, 16);
    sdpa::Vector<double> lse_a(nq), lse_b(nq);
    sdpa::attention_into(Q, K.topRows(split), V.topRows(split), a, lse_a, with_sink);
    sdpa::attention_into(Q, K.bottomRows(nk - split), V.bottomRows(nk - split), b, lse_b, without);
    sdpa::merge_attention(a, lse_a, b, lse_b);
    CHECK((a - want).cwiseAbs().maxCoeff() < 1e-13);
    CHECK((lse_a - want_lse).cwiseAbs().maxCoeff() < 1e-13);
  }
}

TEST_CASE("long rows split across threads keep every variant (decoding)", "[variants]") {
  auto gen = rng(904);
  for (const Index nq : {1, 2, 3}) {
    Case c = random_case(nq, 2600, 32, 32, gen);  // long enough to split the keys into pieces
    c.mask.causal = true;
    c.mask.window_left = 1500;
    c.mask.alibi = true;
    c.mask.slope = 0.004;
    c.mask.softcap = 5;
    c.mask.has_sink = true;
    c.mask.sink = 0.25;
    check_case<float>(c, {}, "split decode " + describe(c));
    c.mask.window_left = 10;  // most pieces see no key at all
    check_case<float>(c, {}, "split decode " + describe(c));
  }
}

TEST_CASE("batched calls take per-head slopes and sinks, with GQA and grouped decoding", "[variants][batched]") {
  auto gen = rng(905);
  const Index B = 2, H = 4, Hkv = 2, d = 16;
  const std::vector<double> slopes = sdpa::alibi_slopes(H), sinks = {0.5, -1.0, 2.0, 0.0};
  for (const Index nq : {1, 2, 37}) {
    const Index nk = 45;
    CAPTURE(nq);
    Matrix<float> q = random_matrix<float>(B * H * nq, d, gen, -2, 2), k = random_matrix<float>(B * Hkv * nk, d, gen, -2, 2),
                  v = random_matrix<float>(B * Hkv * nk, d, gen), out(B * H * nq, d);
    const auto view = [&](auto& m, Index heads, Index n) {
      using S = std::remove_reference_t<decltype(m(0, 0))>;
      return sdpa::TensorView<S>::bhnd(m.data(), B, heads, n, d);
    };
    sdpa::Options options;
    options.causal = true;
    options.window = {20, 0};
    options.alibi_slopes = slopes;
    options.sinks = sinks;
    options.softcap = 4.0;
    options.sequence_lengths = {nk, nk - 6};
    for (const sdpa::Kernel kernel : all_kernels()) {
      CAPTURE(name(kernel));
      options.kernel = kernel;
      out.setConstant(7);
      sdpa::attention<float>(view(q, H, nq), view(k, Hkv, nk), view(v, Hkv, nk), view(out, H, nq), options);
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h) {
          CAPTURE(b, h);
          const auto rows = [&](const Matrix<float>& m, Index heads, Index n, Index head) {
            return Matrix<float>(m.middleRows((b * heads + head) * n, n));
          };
          MaskSpec spec;
          spec.causal = true;
          spec.window_left = 20;
          spec.alibi = true;
          spec.slope = slopes[std::size_t(h)];
          spec.has_sink = true;
          spec.sink = sinks[std::size_t(h)];
          spec.softcap = 4.0;
          spec.lengths = {b == 0 ? nk : nk - 6};
          const Expected e = reference(rows(q, H, nq, h), rows(k, Hkv, nk, h / 2), rows(v, Hkv, nk, h / 2),
                                       1.0 / std::sqrt(double(d)), spec);
          check_attention(rows(out, H, nq, h), e, nk, d, name(kernel));
        }
    }
  }
}

TEST_CASE("SelfAttention: forward and step decoding take every variant per head", "[variants][layer]") {
  const auto layer = sdpa::SelfAttention<double>::random(32, 4, 7, false, true, 2);
  auto gen = rng(906);
  const Matrix<double> X = random_matrix<double>(12, 32, gen);
  sdpa::Options options;
  options.window = {4, sdpa::Window::unbounded};
  options.alibi_slopes = sdpa::alibi_slopes(4);
  options.sinks = {0.1, 0.2, -0.3, 1.0};
  options.softcap = 2.0;
  sdpa::Options causal = options;
  causal.causal = true;
  const Matrix<double> whole = layer.forward(X, causal);
  // Head by head, by hand: each head is the 2-D call with its own slope and sink.
  sdpa::KVCache<double> cache(1, 2, 8, 8, 12);
  Matrix<double> stepped(12, 32);
  stepped.topRows(5) = layer.step(X.topRows(5), cache, 0, options);
  for (Index t = 5; t < 12; ++t) stepped.row(t) = layer.step(X.row(t), cache, 0, options);
  CHECK((stepped - whole).cwiseAbs().maxCoeff() < 1e-12);
  // The slopes make a difference: without them the result changes.
  sdpa::Options plain = causal;
  plain.alibi_slopes.clear();
  CHECK((layer.forward(X, plain) - whole).cwiseAbs().maxCoeff() > 1e-6);
}

TEST_CASE("alibi_slopes gives Press et al.'s geometric slopes", "[variants]") {
  CHECK(sdpa::alibi_slopes(1) == std::vector<double>{std::exp2(-8.0)});
  const std::vector<double> eight = sdpa::alibi_slopes(8);
  for (std::size_t h = 0; h < 8; ++h) CHECK(eight[h] == std::exp2(-double(h + 1)));
  const std::vector<double> twelve = sdpa::alibi_slopes(12);  // 8 of 8 heads, then 4 of 16's odd ones
  REQUIRE(twelve.size() == 12);
  for (std::size_t h = 0; h < 4; ++h) CHECK(twelve[8 + h] == std::exp2(-0.5 - double(2 * h) / 2));
  CHECK_THROWS_AS(sdpa::alibi_slopes(0), std::invalid_argument);
}

TEST_CASE("bad variants are rejected before anything is written", "[variants][errors]") {
  auto gen = rng(907);
  const Matrix<float> Q = random_matrix<float>(4, 8, gen), K = random_matrix<float>(6, 8, gen),
                      V = random_matrix<float>(6, 8, gen);
  Matrix<float> out = Matrix<float>::Constant(4, 8, 3.0f);
  const auto rejects = [&](const sdpa::Options& options, std::initializer_list<const char*> fragments) {
    require_invalid([&] { sdpa::attention_into(Q, K, V, out, options); }, fragments);
    CHECK((out.array() == 3.0f).all());
  };
  sdpa::Options o;
  o.window = {-1, 0};
  rejects(o, {"options.window", "left -1", ">= 0"});
  o = {};
  o.window = {2, -5};
  rejects(o, {"options.window", "right -5"});
  o = {};
  o.alibi_slopes = {0.5, 0.25};
  rejects(o, {"options.alibi_slopes has 2 entries", "1 query head"});
  o = {};
  o.alibi_slopes = {kInf};
  rejects(o, {"options.alibi_slopes[0]", "finite"});
  o = {};
  o.sinks = {std::nan("")};
  rejects(o, {"options.sinks[0]", "finite"});
  o = {};
  o.softcap = 0.0;
  rejects(o, {"options.softcap is 0", "positive"});
  o = {};
  o.softcap = kInf;
  rejects(o, {"options.softcap", "positive and finite"});

  // Batched: one entry per query head.
  Matrix<float> q4 = random_matrix<float>(4 * 4, 8, gen), o4 = Matrix<float>::Constant(16, 8, 3.0f);
  sdpa::Options batched;
  batched.sinks = {1.0, 2.0, 3.0};
  require_invalid(
      [&] {
        sdpa::attention<float>(sdpa::TensorView<float>::bhnd(q4.data(), 1, 4, 4, 8),
                               sdpa::TensorView<const float>::bhnd(K.data(), 1, 1, 6, 8),
                               sdpa::TensorView<const float>::bhnd(V.data(), 1, 1, 6, 8),
                               sdpa::TensorView<float>::bhnd(o4.data(), 1, 4, 4, 8), batched);
      },
      {"options.sinks has 3 entries", "4 query heads"});
  CHECK((o4.array() == 3.0f).all());

  // The layer: one per query head of the layer.
  const auto layer = sdpa::SelfAttention<float>::random(16, 4, 1);
  sdpa::Options per_head;
  per_head.alibi_slopes = {0.5};
  require_invalid([&] { (void)layer.forward(random_matrix<float>(3, 16, gen), per_head); },
                  {"options.alibi_slopes has 1 entries", "4 query heads"});
}

}  // namespace test_variants
