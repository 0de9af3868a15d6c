// Projections and the SelfAttention layer against a plain computation of the same formula:
// heads as column slices, concatenation, the output projection, cross-attention, masks.
#include "catch.hpp"
#include "support.hpp"

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
