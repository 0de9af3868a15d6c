// The golden cases in tests/data, computed by an independent implementation in float64
// (PyTorch 1.13 for attn_* and layer_*; the model variants var_* written out from their
// definitions): every path in float within the derived tolerance, in double to 1e-12 relative.
#include "catch.hpp"
#include "support.hpp"

namespace test_golden {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

MaskSpec mask_of(const Golden& g) {
  MaskSpec mask;
  mask.causal = g.scalar("causal", 0) != 0;
  if (g.has("mask")) mask.allowed = g["mask"].unaryExpr([](double x) { return x != 0; });
  if (g.has("bias")) mask.bias = g["bias"];
  if (g.has("lengths"))
    for (Index i = 0; i < g["lengths"].cols(); ++i) mask.lengths.push_back(Index(g["lengths"](0, i)));
  // model variants (var_*)
  mask.window_left = Index(g.scalar("window_left", -1));
  mask.window_right = Index(g.scalar("window_right", -1));
  mask.alibi = g.scalars.count("alibi_slope") != 0;
  mask.slope = g.scalar("alibi_slope", 0);
  mask.softcap = g.scalar("softcap", 0);
  mask.has_sink = g.scalars.count("sink") != 0;
  mask.sink = g.scalar("sink", 0);
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
      if (!g.has("lse")) continue;
      Matrix<double> out(Q.rows(), V.cols());
      sdpa::Vector<double> lse(Q.rows());
      sdpa::attention_into(Q, K, V, out, lse, options);
      const Matrix<double> want_lse = g["lse"].transpose();
      for (Index i = 0; i < lse.size(); ++i) {
        CAPTURE(i);
        if (std::isinf(want_lse(i, 0)))
          CHECK(lse(i) == want_lse(i, 0));
        else
          CHECK(std::fabs(lse(i) - want_lse(i, 0)) <= 1e-12 * std::max(1.0, std::fabs(want_lse(i, 0))));
      }
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

TEST_CASE("golden model variants: windows, ALiBi, soft-capping, sinks", "[golden][variants]") {
  for (const char* file : {"var_window_both.txt", "var_window_causal.txt", "var_alibi.txt", "var_alibi_causal.txt",
                           "var_softcap.txt", "var_sink.txt", "var_sink_causal_masked.txt", "var_all.txt"})
    check_attention_case(file);
}

TEST_CASE("golden ALiBi slopes", "[golden][variants]") {
  for (const Index heads : {1, 8, 12}) {
    const Golden g = load_golden("var_alibi_slopes_h" + std::to_string(heads) + ".txt");
    const std::vector<double> slopes = sdpa::alibi_slopes(heads);
    REQUIRE(Index(slopes.size()) == g["slopes"].cols());
    for (Index h = 0; h < heads; ++h) CHECK(std::fabs(slopes[std::size_t(h)] - g["slopes"](0, h)) <= 1e-15);
  }
}

TEST_CASE("golden SelfAttention layers from PyTorch", "[golden]") {
  for (const char* file : {"layer_one_head.txt", "layer_four_heads.txt", "layer_four_heads_causal.txt",
                           "layer_cross_two_heads.txt"})
    check_layer_case(file);
}

}  // namespace test_golden
