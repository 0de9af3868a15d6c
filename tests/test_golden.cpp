// The golden cases computed with PyTorch 1.13 in float64, kept in tests/data: every
// path in float within the derived tolerance, in double to 1e-12 relative.
#include "catch.hpp"
#include "support.hpp"

using namespace sdpa_test;

namespace {

MaskSpec mask_of(const Golden& g) {
  MaskSpec mask;
  mask.causal = g.scalar("causal", 0) != 0;
  if (g.has("mask")) mask.allowed = g["mask"].unaryExpr([](double x) { return x != 0; });
  if (g.has("bias")) mask.bias = g["bias"];
  if (g.has("lengths"))
    for (Index i = 0; i < g["lengths"].cols(); ++i) mask.lengths.push_back(Index(g["lengths"](0, i)));
  return mask;
}

/// max |a - b| / max(1, max |b|)
double relative_difference(const Matrix<double>& a, const Matrix<double>& b) {
  return (a - b).cwiseAbs().maxCoeff() / std::max(1.0, b.cwiseAbs().maxCoeff());
}

void check_attention_case(const std::string& file) {
  const Golden g = load_golden(file);
  const Matrix<double>&Q = g["Q"], &K = g["K"], &V = g["V"];
  MaskSpec mask = mask_of(g);
  const double scale = g.scalar("scale", 1.0 / std::sqrt(double(Q.cols())));

  // A golden file with both `mask` and `lengths` states one thing two ways: use each alone.
  std::vector<MaskSpec> masks{mask};
  if (!mask.lengths.empty() && mask.allowed.size() != 0) {
    MaskSpec only_lengths = mask, only_mask = mask;
    only_lengths.allowed.resize(0, 0);
    only_mask.lengths.clear();
    masks = {only_lengths, only_mask};
  }
  // The test's own reference agrees with PyTorch's.
  const Expected ours = reference(Q, K, V, scale, masks[0]);
  CHECK(relative_difference(ours.out.cast<double>(), g["out"]) <= 1e-13);
  CHECK(relative_difference(ours.weights.cast<double>(), g["weights"]) <= 1e-13);

  const Matrix<float> q = Q.cast<float>(), k = K.cast<float>(), v = V.cast<float>();
  Expected expected_float = reference(q, k, v, scale, masks[0]);
  expected_float.out = g["out"].cast<Wide>();  // PyTorch's answer, with float's tolerance
  for (const MaskSpec& m : masks)
    for (const sdpa::Kernel kernel : all_kernels()) {
      sdpa::Options options = m.options(kernel);
      if (g.scalars.count("scale")) options.scale = scale;
      CAPTURE(file, name(kernel));
      CHECK(relative_difference(sdpa::attention(Q, K, V, options), g["out"]) <= 1e-12);
      check_attention(sdpa::attention(q, k, v, options), expected_float, K.rows(), Q.cols(), file);
      CHECK(relative_difference(sdpa::attention_weights(Q, K, options), g["weights"]) <= 1e-12);
    }
}

void check_layer_case(const std::string& file) {
  const Golden g = load_golden(file);
  sdpa::AttentionWeights<double> w;
  w.Wq = g["Wq"];
  w.Wk = g["Wk"];
  w.Wv = g["Wv"];
  w.bq = g["bq"];
  w.bk = g["bk"];
  w.bv = g["bv"];
  w.Wo = g["Wo"];
  w.bo = g["bo"];
  const Index heads = Index(g.scalar("heads", 1));
  const sdpa::SelfAttention<double> layer(w, heads);
  sdpa::Options options;
  options.causal = g.scalar("causal", 0) != 0;
  for (const sdpa::Kernel kernel : all_kernels()) {
    options.kernel = kernel;
    CAPTURE(file, name(kernel));
    const Matrix<double> out = g.has("memory") ? layer.forward(g["X"], g["memory"], options) : layer.forward(g["X"], options);
    CHECK(relative_difference(out, g["out"]) <= 1e-12);
    // float: the layer adds projections around attention; 1e-5 relative is ~100 ulps at
    // d_model = 16, far below the O(0.1) a wrong head slice or mask would cost.
    const auto f = [](const auto& m) { return m.template cast<float>().eval(); };
    sdpa::AttentionWeights<float> wf{f(w.Wq), f(w.Wk), f(w.Wv), f(w.bq), f(w.bk), f(w.bv), f(w.Wo), f(w.bo)};
    const sdpa::SelfAttention<float> layer_f(wf, heads);
    const Matrix<float> out_f =
        g.has("memory") ? layer_f.forward(f(g["X"]), f(g["memory"]), options) : layer_f.forward(f(g["X"]), options);
    CHECK(relative_difference(out_f.cast<double>(), g["out"]) <= 1e-5);
  }
}

}  // namespace

TEST_CASE("golden attention cases from PyTorch", "[golden]") {
  for (const char* file : {"attn_small.txt", "attn_bias_scale.txt", "attn_bool_mask.txt", "attn_causal_nq5_nk7.txt",
                           "attn_causal_nq7_nk4.txt", "attn_key_lengths.txt", "attn_large_logits.txt"})
    check_attention_case(file);
}

TEST_CASE("golden SelfAttention layers from PyTorch", "[golden]") {
  for (const char* file : {"layer_one_head.txt", "layer_four_heads.txt", "layer_four_heads_causal.txt",
                           "layer_cross_two_heads.txt"})
    check_layer_case(file);
}
