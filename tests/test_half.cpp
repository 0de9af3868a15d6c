// Compressed storage. 16-bit (Eigen::half, Eigen::bfloat16): every path, mask kind and decode
// shape against the long-double reference on the same rounded inputs; the Simd path bit for
// bit against the float path on the widened inputs; scores beyond fp16's range. 16-bit and
// int8 (BlockQ8_0) KV caches: quantisation, step-by-step decoding against the reference on
// the dequantised cache, grouped-query decoding at every group size, and their errors.
#include "catch.hpp"
#include "support.hpp"

namespace test_half {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;
using sdpa::Index;
using sdpa::TensorView;
using bf16 = Eigen::bfloat16;
using fp16 = Eigen::half;

namespace {

template <class S>
const char* type_name() {
  if constexpr (std::is_same_v<S, bf16>) return "bf16";
  if constexpr (std::is_same_v<S, fp16>) return "fp16";
  if constexpr (std::is_same_v<S, sdpa::BlockQ8_0>) return "q8_0";
  return "float";
}

/// Feature c of row i of a view, as a float: converted, or dequantised (scale q) for int8 blocks.
template <class S>
float feature_at(const sdpa::MatrixView<const S>& view, Index i, Index c) {
  if constexpr (std::is_same_v<S, sdpa::BlockQ8_0>) {
    const sdpa::BlockQ8_0& block = view(i, c / 32);
    return float(block.scale) * float(block.q[c % 32]);
  } else {
    return float(view(i, c));
  }
}

/// A view as a float matrix of its features (what the reference is given).
template <class S>
Matrix<float> features_of(const sdpa::MatrixView<const S>& view) {
  const Index features = std::is_same_v<S, sdpa::BlockQ8_0> ? view.cols * 32 : view.cols;
  Matrix<float> m(view.rows, features);
  for (Index i = 0; i < view.rows; ++i)
    for (Index c = 0; c < features; ++c) m(i, c) = feature_at(view, i, c);
  return m;
}

/// Random values in [lo, hi), rounded to S: the inputs both the library and the reference see.
template <class S>
Matrix<S> random_rounded(Index rows, Index cols, std::mt19937_64& gen, double lo = -1.0, double hi = 1.0) {
  return random_matrix<float>(rows, cols, gen, lo, hi).template cast<S>();
}

template <class S>
Matrix<float> widened(const Matrix<S>& m) {
  return m.template cast<float>();
}

/// Checks a result of type O against the reference on the rounded inputs (plus, for a call
/// that may round its weights to bf16, rounded_weights_tolerance).
template <class O>
void check_stored(const Matrix<O>& got, const Expected& e, Index nk, Index dk, const std::string& what,
                  bool rounds_weights = false) {
  REQUIRE(got.rows() == e.out.rows());
  REQUIRE(got.cols() == e.out.cols());
  Wide worst = 0;
  Index wi = 0, wc = 0;
  bool finite = true;
  for (Index i = 0; i < got.rows(); ++i)
    for (Index c = 0; c < got.cols(); ++c) {
      const Wide value = Wide(float(got(i, c)));
      finite = finite && std::isfinite(double(value));
      const Wide float_tolerance = tolerance<float>(e, i, nk, dk) + rounded_weights_tolerance(e, i, rounds_weights);
      const Wide ratio = std::fabs(value - e.out(i, c)) / stored_tolerance<O>(float_tolerance, e.out(i, c));
      if (!(ratio <= worst)) worst = ratio, wi = i, wc = c;
    }
  INFO(what << ": worst element (" << wi << ", " << wc << ") got " << float(got(wi, wc)) << " expected "
            << double(e.out(wi, wc)) << ", error/tolerance = " << double(worst));
  CHECK(finite);
  CHECK(worst <= 1);
}

struct Shape {
  Index nq, nk, d;
};

// Prefill (packed microkernels), a d that is no multiple of any vector width (padded copies),
// decoding rows (the in-place microkernels) and a decode long enough to split its keys.
const Shape kShapes[] = {{70, 83, 64}, {33, 40, 20}, {1, 300, 32}, {3, 129, 64}, {2, 1500, 64}};

std::vector<MaskSpec> mask_kinds(Index nq, Index nk, std::mt19937_64& gen) {
  std::vector<MaskSpec> kinds(5);
  kinds[1].causal = true;
  kinds[2].allowed = Matrix<bool>(nq, nk);
  std::bernoulli_distribution keep(0.7);
  for (Index i = 0; i < kinds[2].allowed.size(); ++i) kinds[2].allowed.data()[i] = keep(gen);
  kinds[3].bias = random_matrix<double>(1, nk, gen, -2.0, 2.0);
  kinds[3].causal = true;
  kinds[4].lengths = {std::max<Index>(0, nk - 7)};
  return kinds;
}

template <class Q, class S>
void check_every_path() {
  auto gen = rng(std::hash<std::string>{}(std::string(type_name<Q>()) + type_name<S>()));
  for (const Shape& shape : kShapes) {
    const Matrix<Q> q = random_rounded<Q>(shape.nq, shape.d, gen);
    const Matrix<S> k = random_rounded<S>(shape.nk, shape.d, gen), v = random_rounded<S>(shape.nk, shape.d, gen);
    const Matrix<float> qf = widened(q), kf = widened(k), vf = widened(v);
    const std::vector<MaskSpec> kinds = mask_kinds(shape.nq, shape.nk, gen);
    for (std::size_t m = 0; m < kinds.size(); ++m) {
      const Expected e = reference(qf, kf, vf, 1.0 / std::sqrt(double(shape.d)), kinds[m]);
      for (const sdpa::Kernel kernel : all_kernels()) {
        CAPTURE(type_name<Q>(), type_name<S>(), shape.nq, shape.nk, shape.d, m, name(kernel));
        const sdpa::Options options = kinds[m].options(kernel);
        const Matrix<Q> got = sdpa::attention(q, k, v, options);
        const bool rounds = may_round_weights<Q, S>(kernel, shape.nq, shape.d, shape.d);
        check_stored(got, e, shape.nk, shape.d, name(kernel), rounds);
        // The Simd path computes a 16-bit call exactly as the float call on the widened inputs,
        // then rounds once: the same bits. (Blocked's plain loops are not held to this: the
        // compiler may fuse a * b + c differently in each instantiation; nor is the vdpbf16ps
        // path, which rounds the weights.)
        if (kernel == sdpa::Kernel::Simd && !rounds) {
          const Matrix<Q> from_float = sdpa::attention(qf, kf, vf, options).template cast<Q>();
          CHECK(got == from_float);
        }
      }
    }
  }
}

}  // namespace

// Each storage pair instantiates every path for every ISA the build carries (minutes of a
// sanitizer build's compile time), so the pairs here are those that exercise a distinct
// conversion: bf16 and fp16 loads, float queries against each, and a 16-bit Q with another
// 16-bit K and V. (float, fp16 cache) also runs in the cache and grouped-decoding tests below.
TEST_CASE("16-bit storage matches the reference on the rounded inputs on every path and mask", "[half]") {
  with_each_bf16_dot_setting([] { check_every_path<bf16, bf16>(); });
  check_every_path<fp16, fp16>();
  check_every_path<float, bf16>();
  check_every_path<bf16, fp16>();
}

TEST_CASE("16-bit attention_into writes float LSEs that merge two halves of the keys", "[half]") {
  auto gen = rng(11);
  const Index nq = 5, nk = 700, d = 32;
  const Matrix<bf16> q = random_rounded<bf16>(nq, d, gen), k = random_rounded<bf16>(nk, d, gen),
                     v = random_rounded<bf16>(nk, d, gen);
  const Expected e = reference(widened(q), widened(k), widened(v), 1.0 / std::sqrt(double(d)), MaskSpec{});
  Matrix<bf16> a(nq, d), b(nq, d);
  sdpa::Vector<float> lse_a(nq), lse_b(nq);
  sdpa::attention_into(q, k.topRows(300), v.topRows(300), a, lse_a);
  sdpa::attention_into(q, k.bottomRows(400), v.bottomRows(400), b, lse_b);
  sdpa::merge_attention(a, lse_a, b, lse_b);
  for (Index i = 0; i < nq; ++i) CHECK(std::fabs(Wide(lse_a(i)) - e.lse[std::size_t(i)]) <= 1e-5L);
  // Each part and the merge round to bf16 once: three roundings, so three units' worth.
  for (Index i = 0; i < nq; ++i)
    for (Index c = 0; c < d; ++c) {
      const Wide exact = e.out(i, c);
      const Wide tol = stored_tolerance<bf16>(tolerance<float>(e, i, nk, d) + rounded_weights_tolerance(e, i, may_round_weights<bf16, bf16>(sdpa::Kernel::Auto, nq, d, d)), exact);
      CHECK(std::fabs(Wide(float(a(i, c))) - exact) <= 3 * tol);
    }
}

TEST_CASE("scores beyond fp16's range are computed in float and never become inf", "[half]") {
  auto gen = rng(12);
  const Index nq = 6, nk = 50, d = 64;
  // |q . k| reaches 64 * 250^2 = 4e6 and the scaled scores 5e5, far past fp16's 65504.
  const Matrix<fp16> q = random_rounded<fp16>(nq, d, gen, 100.0, 250.0), k = random_rounded<fp16>(nk, d, gen, 100.0, 250.0),
                     v = random_rounded<fp16>(nk, d, gen);
  const Expected e = reference(widened(q), widened(k), widened(v), 1.0 / std::sqrt(double(d)), MaskSpec{});
  REQUIRE(e.score_magnitude[0] > 65504);
  for (const sdpa::Kernel kernel : all_kernels()) {
    CAPTURE(name(kernel));
    check_stored(sdpa::attention(q, k, v, MaskSpec{}.options(kernel)), e, nk, d, name(kernel));
  }
}

namespace {

/// Grouped-query decoding of `tokens` new tokens per head: H query heads over H / group
/// key/value heads of a 16-bit (or float) cache, against the reference head by head.
/// (Sizes are kept small: under qemu the long-double reference is software quad precision.)
template <class S>
void check_grouped_decoding(Index group, Index tokens, bool causal, bool padded, Index B = 2,
                            Index N = kSoftwareWide ? 200 : 400) {  // several key tiles either way
  auto gen = rng(Index(100 * group + 10 * tokens) + causal + 2 * padded);
  const Index Hkv = 2, H = Hkv * group, d = 32;
  std::vector<float> qs(std::size_t(B * H * tokens * d));
  std::uniform_real_distribution<float> dist(-1, 1);
  for (float& x : qs) x = dist(gen);
  // The cache: [B, Hkv, N, d] as a KVCache of S holds it (int8 rows are d / 32 blocks).
  sdpa::KVCache<S> cache(B, Hkv, d, d, N);
  for (Index b = 0; b < B; ++b)
    cache.append(b, random_matrix<float>(N, Hkv * d, gen), random_matrix<float>(N, Hkv * d, gen));
  const auto tensor = [&](auto part) {  // part(sequence, head): the cache's view of K or V
    const sdpa::MatrixView<const S> first = part(0, 0);
    const Index batch_stride = B > 1 ? part(1, 0).data - first.data : 0;
    return TensorView<const S>{first.data, B, Hkv, N, first.cols, batch_stride, part(0, 1).data - first.data,
                               first.row_stride};
  };
  const auto k = tensor([&](Index b, Index h) { return cache.keys(b, h); });
  const auto v = tensor([&](Index b, Index h) { return cache.values(b, h); });
  std::vector<float> os(qs.size());
  const auto q = TensorView<const float>::bnhd(qs.data(), B, tokens, H, d);  // the layout a projection gives
  const auto o = TensorView<float>::bnhd(os.data(), B, tokens, H, d);
  sdpa::Options options;
  options.causal = causal;
  if (padded) options.sequence_lengths.assign(std::size_t(B), N), options.sequence_lengths[0] = N - 37;
  sdpa::attention(q, k, v, o, options);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      CAPTURE(type_name<S>(), group, tokens, causal, padded, b, h);
      MaskSpec mask;
      mask.causal = causal;
      if (padded) mask.lengths = {options.sequence_lengths[std::size_t(b)]};
      const Expected e = reference(features_of(q.head(b, h)), features_of(k.head(b, h / group)),
                                   features_of(v.head(b, h / group)), 1.0 / std::sqrt(double(d)), mask);
      check_attention(features_of(sdpa::MatrixView<const float>(o.head(b, h))), e, N, d, "grouped decoding");
    }
}

}  // namespace

TEST_CASE("grouped-query decoding reads each kv head once for any group size and a few tokens", "[half]") {
  for (const Index group : {1, 2, 3, 5, 8, 16})
    for (const Index tokens : {1, 2, 4})
      for (const bool causal : {false, true}) check_grouped_decoding<float>(group, tokens, causal, group == 8);
  for (const Index group : {2, 7, 16}) {
    check_grouped_decoding<bf16>(group, 3, true, group == 7);
    check_grouped_decoding<fp16>(group, 1, false, group == 2);
    check_grouped_decoding<sdpa::BlockQ8_0>(group, group == 2 ? 4 : 1, true, group == 16);
  }
  // One sequence of two kv groups: few work items, so each splits its 1100 keys into pieces.
  check_grouped_decoding<bf16>(8, 2, true, true, 1, 1100);
  check_grouped_decoding<sdpa::BlockQ8_0>(4, 1, false, false, 1, 1100);
}

namespace {

/// A float layer over a 16-bit or int8 cache, fed a prompt (the packed path) and then one token
/// per step (the decode microkernels): the cache holds each projection rounded once (or
/// quantised), and every step's output is attention over what it holds.
template <class C>
void check_cache_steps() {
  const Index d_model = 256, heads = 8, kv_heads = 2, dk = d_model / heads, group = heads / kv_heads;  // d_k 32
  const auto layer = sdpa::SelfAttention<float>::random(d_model, heads, 5, true, false, kv_heads);  // no Wo
  const auto& w = layer.weights();
  auto gen = rng(13);
  const Matrix<float> X = random_matrix<float>(9, d_model, gen);
  sdpa::KVCache<C> cache(1, kv_heads, dk, dk, 16);
  Matrix<float> outputs(X.rows(), heads * dk), queries(X.rows(), heads * dk), keys(X.rows(), kv_heads * dk);
  const auto feed = [&](Index first, Index count) {
    const Matrix<float> x = X.middleRows(first, count);
    outputs.middleRows(first, count) = layer.step(x, cache);
    queries.middleRows(first, count) = sdpa::project(x, w.Wq, w.bq);  // the layer's own products
    keys.middleRows(first, count) = sdpa::project(x, w.Wk, w.bk);
  };
  feed(0, 5);
  for (Index t = 5; t < X.rows(); ++t) feed(t, 1);
  for (Index kv = 0; kv < kv_heads; ++kv) {
    const Matrix<float> held = features_of(cache.keys(0, kv)), given = keys.middleCols(kv * dk, dk);
    if constexpr (std::is_same_v<C, sdpa::BlockQ8_0>) {  // within half a step of its block
      for (Index i = 0; i < held.rows(); ++i)
        for (Index c = 0; c < dk; ++c)
          CHECK(std::fabs(held(i, c) - given(i, c)) <= 0.5f * float(cache.keys(0, kv)(i, c / 32).scale) * 1.0001f);
    } else {  // rounded once, to nearest
      CHECK(held == given.template cast<C>().template cast<float>());
    }
  }
  for (Index h = 0; h < heads; ++h) {
    CAPTURE(type_name<C>(), h);
    MaskSpec mask;
    mask.causal = true;
    const Expected e = reference(Matrix<float>(queries.middleCols(h * dk, dk)), features_of(cache.keys(0, h / group)),
                                 features_of(cache.values(0, h / group)), 1.0 / std::sqrt(double(dk)), mask);
    check_attention(Matrix<float>(outputs.middleCols(h * dk, dk)), e, X.rows(), dk, "KVCache step");
  }
}

}  // namespace

TEST_CASE("a 16-bit or int8 KVCache under a float layer: each step attends over what the cache holds", "[half]") {
  check_cache_steps<bf16>();
  check_cache_steps<fp16>();
  check_cache_steps<sdpa::BlockQ8_0>();
}

TEST_CASE("int8 blocks quantise as q8_0 does: scale max|x| / 127 in fp16, q rounded with it", "[half]") {
  auto gen = rng(15);
  const Matrix<float> keys = random_matrix<float>(3, 64, gen, -3.0, 3.0);
  Matrix<float> values = Matrix<float>::Zero(3, 64);  // zero blocks: scale 0, q 0
  values(1, 40) = 1e-3f;
  sdpa::KVCache<sdpa::BlockQ8_0> cache(1, 1, 64, 64, 4);
  cache.append(0, keys, values);
  const sdpa::MatrixView<const sdpa::BlockQ8_0> k = cache.keys(0, 0), v = cache.values(0, 0);
  REQUIRE(k.cols == 2);
  for (Index i = 0; i < 3; ++i)
    for (Index b = 0; b < 2; ++b) {
      const float largest = keys.row(i).segment(b * 32, 32).cwiseAbs().maxCoeff();
      CHECK(k(i, b).scale == Eigen::half(largest / 127.0f));
      for (Index c = 0; c < 32; ++c)
        CHECK(int(k(i, b).q[c]) == int(std::nearbyint(keys(i, b * 32 + c) / float(k(i, b).scale))));
    }
  CHECK(float(v(0, 0).scale) == 0.0f);
  CHECK(std::fabs(feature_at(v, 1, 40) - 1e-3f) <= 0.5f * float(v(1, 1).scale));
}

TEST_CASE("int8 caches: what they cannot hold and the paths they cannot run are errors", "[half]") {
  using Q8 = sdpa::BlockQ8_0;
  CHECK_THROWS_AS(sdpa::KVCache<Q8>(1, 1, 20, 32, 4), std::invalid_argument);  // not whole blocks
  sdpa::KVCache<Q8> cache(1, 1, 32, 32, 4);
  Matrix<float> bad = Matrix<float>::Zero(1, 32);
  for (const float x : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity(), 1e9f}) {
    bad(0, 7) = x;
    require_invalid([&] { cache.append(0, bad, Matrix<float>::Zero(1, 32)); }, {"KVCache::append", "keys", "q8_0"});
    require_invalid([&] { cache.append(0, Matrix<float>::Zero(1, 32), bad); }, {"values", "column 7"});
    CHECK(cache.length(0) == 0);  // nothing was written
  }
  cache.append(0, Matrix<float>::Ones(2, 32), Matrix<float>::Ones(2, 32));
  std::vector<float> q(32, 0.5f), out(32, -1.0f);
  const auto k = cache.keys(0, 0), v = cache.values(0, 0);
  const TensorView<const Q8> kt{k.data, 1, 1, k.rows, k.cols, 0, 0, k.row_stride};
  const TensorView<const Q8> vt{v.data, 1, 1, v.rows, v.cols, 0, 0, v.row_stride};
  for (const sdpa::Kernel kernel : {sdpa::Kernel::Reference, sdpa::Kernel::Blocked}) {
    sdpa::Options options;
    options.kernel = kernel;
    require_invalid([&] {
      sdpa::attention(TensorView<const float>::bhnd(q.data(), 1, 1, 1, 32), kt, vt,
                      TensorView<float>::bhnd(out.data(), 1, 1, 1, 32), options);
    }, {"options.kernel", "int8", "Simd path only"});
    CHECK(out[0] == -1.0f);
  }
  sdpa::attention(TensorView<const float>::bhnd(q.data(), 1, 1, 1, 32), kt, vt, TensorView<float>::bhnd(out.data(), 1, 1, 1, 32));
  const float one = 127.0f * float(Eigen::half(1.0f / 127.0f));  // 1 dequantised: 0.99994
  CHECK(std::fabs(out[0] - one) <= 1e-6f);
}

TEST_CASE("SelfAttention<bfloat16> projects in float, rounds once and attends in float", "[half]") {
  const Index d_model = 32, heads = 4, dk = d_model / heads;
  auto gen = rng(14);
  const auto layer = sdpa::SelfAttention<bf16>::random(d_model, heads, 3, false, false);
  const Matrix<bf16> X = random_rounded<bf16>(12, d_model, gen);
  const Matrix<bf16> Y = layer.forward(X);
  const auto& w = layer.weights();
  const Matrix<bf16> Qb = sdpa::project(X, w.Wq), Kb = sdpa::project(X, w.Wk), Vb = sdpa::project(X, w.Wv);
  // The projection: a float product (gamma(d_model) relative to sum |x| |w|), rounded once.
  const Matrix<Wide> exact = widened(X).cast<Wide>() * widened(w.Wq).cast<Wide>();
  const Matrix<Wide> magnitude = widened(X).cwiseAbs().cast<Wide>() * widened(w.Wq).cwiseAbs().cast<Wide>();
  for (Index i = 0; i < exact.size(); ++i) {
    const Wide float_error = gamma<float>(d_model) * magnitude.data()[i];
    CHECK(std::fabs(Wide(float(Qb.data()[i])) - exact.data()[i]) <= stored_tolerance<bf16>(float_error, exact.data()[i]));
  }
  for (Index h = 0; h < heads; ++h) {
    CAPTURE(h);
    const Expected e = reference(widened(Matrix<bf16>(Qb.middleCols(h * dk, dk))), widened(Matrix<bf16>(Kb.middleCols(h * dk, dk))),
                                 widened(Matrix<bf16>(Vb.middleCols(h * dk, dk))), 1.0 / std::sqrt(double(dk)), MaskSpec{});
    check_stored(Matrix<bf16>(Y.middleCols(h * dk, dk)), e, X.rows(), dk, "SelfAttention<bf16>",
                 may_round_weights<bf16, bf16>(sdpa::Kernel::Auto, X.rows(), dk, dk));
  }
}

}  // namespace test_half
