// Projections and the SelfAttention layer against a plain computation of the same formula:
// heads as column slices, concatenation, the output projection, cross-attention, masks.
#include "catch.hpp"
#include "support.hpp"

namespace test_self_attention {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

Matrix<double> add_row(Matrix<double> m, const sdpa::RowVector<double>& b) {
  if (b.size() != 0)
    for (Index i = 0; i < m.rows(); ++i) m.row(i) += b;
  return m;
}

/// The layer written out: project, attend head by head with the test's reference, concatenate, project.
Matrix<double> plain_layer(const sdpa::AttentionWeights<double>& w, Index heads, const Matrix<double>& X,
                           const Matrix<double>& source, const MaskSpec& mask) {
  const Matrix<double> Q = add_row(X * w.Wq, w.bq), K = add_row(source * w.Wk, w.bk), V = add_row(source * w.Wv, w.bv);
  const Index dk = Q.cols() / heads, dv = V.cols() / heads;
  Matrix<double> concat(X.rows(), V.cols());
  for (Index h = 0; h < heads; ++h) {
    const Expected e = reference(Matrix<double>(Q.middleCols(h * dk, dk)), Matrix<double>(K.middleCols(h * dk, dk)),
                                 Matrix<double>(V.middleCols(h * dv, dv)), 1.0 / std::sqrt(double(dk)), mask);
    concat.middleCols(h * dv, dv) = e.out.cast<double>();
  }
  return w.Wo.size() ? add_row(concat * w.Wo, w.bo) : concat;
}

sdpa::AttentionWeights<double> random_weights(Index d_in, Index d_kv_in, Index heads, Index dk, Index dv, Index d_out,
                                              bool biases, std::mt19937_64& gen) {
  sdpa::AttentionWeights<double> w;
  w.Wq = random_matrix<double>(d_in, heads * dk, gen, -0.5, 0.5);
  w.Wk = random_matrix<double>(d_kv_in, heads * dk, gen, -0.5, 0.5);
  w.Wv = random_matrix<double>(d_kv_in, heads * dv, gen, -0.5, 0.5);
  if (biases) {
    w.bq = random_matrix<double>(1, heads * dk, gen);
    w.bk = random_matrix<double>(1, heads * dk, gen);
    w.bv = random_matrix<double>(1, heads * dv, gen);
  }
  if (d_out > 0) {
    w.Wo = random_matrix<double>(heads * dv, d_out, gen, -0.5, 0.5);
    if (biases) w.bo = random_matrix<double>(1, d_out, gen);
  }
  return w;
}

double max_difference(const Matrix<double>& a, const Matrix<double>& b) { return (a - b).cwiseAbs().maxCoeff(); }

}  // namespace

TEST_CASE("project computes X W + b, with or without b", "[layer]") {
  auto gen = rng(1);
  const Matrix<double> X = random_matrix<double>(7, 5, gen), W = random_matrix<double>(5, 3, gen);
  const sdpa::RowVector<double> b = random_matrix<double>(1, 3, gen);
  const Matrix<double> Y = sdpa::project(X, W, b), Y0 = sdpa::project(X, W);
  for (Index i = 0; i < 7; ++i)
    for (Index j = 0; j < 3; ++j) {
      double dot = 0;
      for (Index e = 0; e < 5; ++e) dot += X(i, e) * W(e, j);
      CHECK(std::fabs(Y0(i, j) - dot) <= 1e-14);
      CHECK(std::fabs(Y(i, j) - (dot + b(j))) <= 1e-14);
    }
}

TEST_CASE("SelfAttention equals the layer written out, for every head count and option", "[layer]") {
  auto gen = rng(2);
  // (d_model, heads, d_k, d_v): one head; many; d_k != d_v; no output projection.
  struct Shape { Index d_model, heads, dk, dv, d_out; bool biases; };
  for (const Shape& s : {Shape{8, 1, 8, 8, 8, true}, Shape{16, 4, 4, 4, 16, true}, Shape{12, 3, 5, 2, 10, false},
                         Shape{10, 2, 6, 7, 0, true}}) {
    const auto w = random_weights(s.d_model, s.d_model, s.heads, s.dk, s.dv, s.d_out, s.biases, gen);
    const sdpa::SelfAttention<double> layer(w, s.heads);
    const Matrix<double> X = random_matrix<double>(11, s.d_model, gen);
    for (const bool causal : {false, true})
      for (const sdpa::Kernel kernel : all_kernels()) {
        MaskSpec mask;
        mask.causal = causal;
        CAPTURE(s.d_model, s.heads, s.dk, s.dv, causal, name(kernel));
        const Matrix<double> expected = plain_layer(w, s.heads, X, X, mask);
        CHECK(max_difference(layer.forward(X, mask.options(kernel)), expected) <= 1e-12);
      }
  }
}

TEST_CASE("cross-attention: queries from X, keys and values from memory of another width", "[layer]") {
  auto gen = rng(3);
  const auto w = random_weights(6, 9, 2, 4, 3, 5, true, gen);
  const sdpa::SelfAttention<double> layer(w, 2);
  const Matrix<double> X = random_matrix<double>(4, 6, gen), memory = random_matrix<double>(13, 9, gen);
  MaskSpec mask;
  mask.lengths = {13, 5, 0, 9};  // masks pass through to every head
  for (const sdpa::Kernel kernel : all_kernels()) {
    CAPTURE(name(kernel));
    CHECK(max_difference(layer.forward(X, memory, mask.options(kernel)), plain_layer(w, 2, X, memory, mask)) <= 1e-12);
  }
}

TEST_CASE("SelfAttention from (Wq, Wk, Wv) alone is plain single-head attention", "[layer]") {
  auto gen = rng(4);
  const Matrix<float> Wq = random_matrix<float>(8, 8, gen), Wk = random_matrix<float>(8, 8, gen),
                      Wv = random_matrix<float>(8, 8, gen), X = random_matrix<float>(5, 8, gen);
  const sdpa::SelfAttention<float> layer(Wq, Wk, Wv);
  CHECK(layer.heads() == 1);
  CHECK(layer.head_dim() == 8);
  const Matrix<float> expected = sdpa::attention(Matrix<float>(X * Wq), Matrix<float>(X * Wk), Matrix<float>(X * Wv));
  CHECK((layer.forward(X) - expected).cwiseAbs().maxCoeff() <= 1e-5f);
}

TEST_CASE("random layers are Glorot-scaled and reproducible from their seed", "[layer]") {
  const auto a = sdpa::SelfAttention<float>::random(64, 8, 42), b = sdpa::SelfAttention<float>::random(64, 8, 42),
             c = sdpa::SelfAttention<float>::random(64, 8, 43);
  CHECK(a.weights().Wq == b.weights().Wq);
  CHECK(a.weights().Wo == b.weights().Wo);
  CHECK(a.weights().Wq != c.weights().Wq);
  const float limit = std::sqrt(6.0f / 128.0f);
  CHECK(a.weights().Wq.cwiseAbs().maxCoeff() <= limit);
  CHECK(a.weights().Wq.cwiseAbs().maxCoeff() > 0.9f * limit);  // the range is used, not a constant
  CHECK(a.weights().bq.size() == 64);
  CHECK(a.weights().bq.isZero(0));
  CHECK(a.head_dim() == 8);
  const auto bare = sdpa::SelfAttention<double>::random(16, 2, 1, /*biases=*/false, /*output_projection=*/false);
  CHECK(bare.weights().bq.size() == 0);
  CHECK(bare.weights().Wo.size() == 0);
  auto gen = rng(5);
  CHECK(bare.forward(random_matrix<double>(3, 16, gen)).cols() == 16);
}

TEST_CASE("decoding token by token through the KV cache equals one causal pass", "[layer][decode]") {
  for (const Index kv_heads : {Index(4), Index(2), Index(1)}) {
    const auto layer = sdpa::SelfAttention<double>::random(32, 4, 7, true, true, kv_heads);
    auto gen = rng(10);
    const Matrix<double> X = random_matrix<double>(40, 32, gen);
    sdpa::Options causal;
    causal.causal = true;
    const Matrix<double> whole = layer.forward(X, causal);
    for (const sdpa::Kernel kernel : all_kernels()) {
      sdpa::KVCache<double> cache(1, kv_heads, 8, 8, 40);
      sdpa::Options options;
      options.kernel = kernel;
      Matrix<double> stepped(40, 32);
      stepped.topRows(11) = layer.step(X.topRows(11), cache, 0, options);  // the prompt at once
      for (Index t = 11; t < 40; ++t) stepped.row(t) = layer.step(X.row(t), cache, 0, options);
      CAPTURE(kv_heads, name(kernel));
      CHECK(cache.length(0) == 40);
      CHECK(max_difference(stepped, whole) <= 1e-12);
    }
  }
}

TEST_CASE("a cache holds several sequences of different lengths", "[layer][decode]") {
  const auto layer = sdpa::SelfAttention<double>::random(16, 2, 3);
  auto gen = rng(11);
  const Matrix<double> A = random_matrix<double>(9, 16, gen), B = random_matrix<double>(5, 16, gen);
  sdpa::Options causal;
  causal.causal = true;
  sdpa::KVCache<double> cache(2, 2, 8, 8, 16);
  Matrix<double> a(9, 16), b(5, 16);
  a.topRows(3) = layer.step(A.topRows(3), cache, 0);
  for (Index t = 0; t < 5; ++t) {  // interleaved: sequence 1 one token at a time, sequence 0 too
    b.row(t) = layer.step(B.row(t), cache, 1);
    if (t + 3 < 9) a.row(t + 3) = layer.step(A.row(t + 3), cache, 0);
  }
  a.bottomRows(1) = layer.step(A.bottomRows(1), cache, 0);
  CHECK(cache.length(0) == 9);
  CHECK(cache.length(1) == 5);
  CHECK(max_difference(a, layer.forward(A, causal)) <= 1e-12);
  CHECK(max_difference(b, layer.forward(B, causal)) <= 1e-12);
}

TEST_CASE("grouped-query layers equal layers with the key/value heads repeated", "[layer]") {
  auto gen = rng(12);
  const auto w = random_weights(24, 24, 2, 4, 4, 24, true, gen);  // 2 kv heads of 4
  // 6 query heads over those 2 kv heads, and the same with Wk, Wv columns repeated per query head.
  sdpa::AttentionWeights<double> gqa = w, mha = w;
  gqa.Wq = mha.Wq = random_matrix<double>(24, 24, gen, -0.5, 0.5);
  gqa.bq = mha.bq = random_matrix<double>(1, 24, gen);
  gqa.Wo = mha.Wo = random_matrix<double>(24, 24, gen, -0.5, 0.5);  // 6 heads x d_v 4 rows
  mha.Wk = Matrix<double>(24, 24);
  mha.Wv = Matrix<double>(24, 24);
  mha.bk = sdpa::RowVector<double>(24);
  mha.bv = sdpa::RowVector<double>(24);
  for (Index h = 0; h < 6; ++h) {
    mha.Wk.middleCols(h * 4, 4) = w.Wk.middleCols((h / 3) * 4, 4);
    mha.Wv.middleCols(h * 4, 4) = w.Wv.middleCols((h / 3) * 4, 4);
    mha.bk.segment(h * 4, 4) = w.bk.segment((h / 3) * 4, 4);
    mha.bv.segment(h * 4, 4) = w.bv.segment((h / 3) * 4, 4);
  }
  const sdpa::SelfAttention<double> grouped(gqa, 6, 2), repeated(mha, 6);
  CHECK(grouped.kv_heads() == 2);
  const Matrix<double> X = random_matrix<double>(13, 24, gen);
  CHECK(max_difference(grouped.forward(X), repeated.forward(X)) <= 1e-12);
}

TEST_CASE("cache misuse throws and leaves the cache as it was", "[layer][decode][errors]") {
  const auto layer = sdpa::SelfAttention<float>::random(16, 2, 1);
  sdpa::KVCache<float> cache(1, 2, 8, 8, 4);
  auto gen = rng(13);
  (void)layer.step(random_matrix<float>(3, 16, gen), cache);
  const auto throws = [](auto&& call, const char* fragment) {
    std::string message;
    try {
      call();
    } catch (const std::invalid_argument& e) {
      message = e.what();
    }
    INFO(message);
    CHECK(message.find(fragment) != std::string::npos);
  };
  throws([&] { (void)layer.step(random_matrix<float>(2, 16, gen), cache); }, "exceed the cache's capacity 4");
  CHECK(cache.length(0) == 3);
  sdpa::KVCache<float> wrong(1, 1, 8, 8, 4);
  throws([&] { (void)layer.step(random_matrix<float>(1, 16, gen), wrong); }, "the cache holds 1 heads");
  throws([&] { (void)layer.step(random_matrix<float>(1, 16, gen), cache, 1); }, "sequence 1 is outside [0, 1)");
  throws([&] { cache.append(0, Matrix<float>(1, 15), Matrix<float>(1, 16)); }, "keys are 1x15");
  throws([] { sdpa::KVCache<float>(1, 0, 8, 8, 4); }, "must all be at least 1");
  CHECK(cache.length(0) == 3);
  throws([] { (void)sdpa::SelfAttention<float>::random(16, 4, 1, true, true, 3); }, "multiple of kv_heads (3)");
}

}  // namespace test_self_attention
