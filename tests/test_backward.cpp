// The backward pass (sdpa/backward.hpp). This file's own oracle differentiates the test
// reference's long-double attention by hand (the chain rule written out, sharing nothing with
// the library); the oracle is checked against central finite differences, and every path
// against the oracle: in double to 1e-11, in float within a tolerance derived below. Also the
// golden gradients of PyTorch's autograd, bit-identity across thread counts, hostile inputs
// and errors.
#include "catch.hpp"
#include "support.hpp"

#include <functional>

namespace test_backward {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

/// The gradients of L = sum(dO * O), exact (long double), and magnitudes for the tolerance.
struct ExpectedGradients {
  Matrix<Wide> dq, dk, dv, dbias;
  Wide dsink = 0;
  // The same sums over absolute values of their terms, each term's weight relative error
  // epsilon_i included (see float_tolerances): what a float path's error is a multiple of.
  Matrix<Wide> dq_bound, dk_bound, dv_bound, dbias_bound;
  Wide dsink_bound = 0;
};

/// Differentiates reference(Q, K, V, scale, mask) for L = sum(dO * O). `row_error[i]`: the
/// relative error of row i's recomputed weights, which scales every bound (0 for no bounds).
template <class T>
ExpectedGradients expected_gradients(const Matrix<T>& Q, const Matrix<T>& K, const Matrix<T>& V, const Matrix<T>& dO,
                                     double scale, const MaskSpec& mask, const std::vector<Wide>& row_error = {}) {
  const Index nq = Q.rows(), nk = K.rows(), dk = Q.cols(), dv = V.cols();
  const Expected e = reference(Q, K, V, scale, mask);
  ExpectedGradients g;
  g.dq = g.dq_bound = Matrix<Wide>::Zero(nq, dk);
  g.dk = g.dk_bound = Matrix<Wide>::Zero(nk, dk);
  g.dv = g.dv_bound = Matrix<Wide>::Zero(nk, dv);
  const bool full_bias = mask.bias.rows() == nq && nq > 1;
  if (mask.bias.size() != 0) g.dbias = g.dbias_bound = Matrix<Wide>::Zero(mask.bias.rows(), nk);
  for (Index i = 0; i < nq; ++i) {
    const Wide eps_i = row_error.empty() ? Wide(0) : row_error[std::size_t(i)];
    Wide d = 0, d_abs = 0;  // D_i = dO_i . o_i
    for (Index c = 0; c < dv; ++c) {
      d += Wide(dO(i, c)) * e.out(i, c);
      d_abs += std::fabs(Wide(dO(i, c)) * e.out(i, c));
    }
    if (mask.has_sink && e.lse[std::size_t(i)] != -std::numeric_limits<Wide>::infinity()) {
      const Wide p_sink = std::exp(Wide(mask.sink) - e.lse[std::size_t(i)]);
      g.dsink -= p_sink * d;
      g.dsink_bound += p_sink * d_abs * (eps_i + 1);
    }
    for (Index j = 0; j < nk; ++j) {
      const Wide p = e.weights(i, j);
      if (p == 0) continue;
      Wide dp = 0, dp_abs = 0;  // dO_i . v_j
      for (Index c = 0; c < dv; ++c) {
        dp += Wide(dO(i, c)) * Wide(V(j, c));
        dp_abs += std::fabs(Wide(dO(i, c)) * Wide(V(j, c)));
      }
      const Wide ds = p * (dp - d), ds_bound = eps_i * p * (std::fabs(dp - d) + dp_abs + d_abs);
      Wide cap_derivative = 1;
      if (mask.softcap > 0) {
        Wide u = 0;
        for (Index c = 0; c < dk; ++c) u += Wide(Q(i, c)) * Wide(K(j, c));
        const Wide t = std::tanh(Wide(scale) * u / Wide(mask.softcap));
        cap_derivative = 1 - t * t;
      }
      const Wide du = ds * cap_derivative, du_bound = ds_bound + (mask.softcap > 0 ? eps_i * std::fabs(ds) : 0);
      if (g.dbias.size() != 0) {
        g.dbias(full_bias ? i : 0, j) += ds;
        g.dbias_bound(full_bias ? i : 0, j) += ds_bound;
      }
      for (Index c = 0; c < dv; ++c) {
        g.dv(j, c) += p * Wide(dO(i, c));
        g.dv_bound(j, c) += eps_i * p * std::fabs(Wide(dO(i, c)));
      }
      for (Index c = 0; c < dk; ++c) {
        g.dq(i, c) += Wide(scale) * du * Wide(K(j, c));
        g.dq_bound(i, c) += Wide(scale) * (du_bound + eps_i * std::fabs(du)) * std::fabs(Wide(K(j, c)));
        g.dk(j, c) += Wide(scale) * du * Wide(Q(i, c));
        g.dk_bound(j, c) += Wide(scale) * (du_bound + eps_i * std::fabs(du)) * std::fabs(Wide(Q(i, c)));
      }
    }
  }
  return g;
}

/// The relative error of each row's weights as a float path recomputes them, the factor that
/// every bound of expected_gradients multiplies (a first-order analysis, doubled):
///  * p_ij = exp(s_ij - lse_i): the score is off by ds_i (tolerance(), support.hpp), lse_i by
///    its float rounding (|lse_i| eps / 2) and exp by 8 eps (tests/test_exp.cpp);
///  * each sum of n terms adds gamma(n) relative to its sum of absolute values: dO . v (d_v),
///    D_i (d_v), and the gradients' sums over keys or queries (Nk or Nq);
///  * the soft cap's derivative 1 - tanh^2 is off by a few eps (vector tanh, test_exp.cpp).
template <class T>
std::vector<Wide> weight_errors(const Expected& e, Index nq, Index nk, Index dk, Index dv) {
  const Wide eps = Wide(std::numeric_limits<T>::epsilon());
  std::vector<Wide> errors(std::size_t(nq), Wide(0));
  for (Index i = 0; i < nq; ++i) {
    const Wide ds = gamma<T>(dk + 5) * e.score_magnitude[std::size_t(i)] + 4 * eps * e.softcap;
    const Wide lse = std::isfinite(double(e.lse[std::size_t(i)])) ? std::fabs(e.lse[std::size_t(i)]) : Wide(0);
    errors[std::size_t(i)] =
        2 * (2 * (ds + lse * eps / 2 + 8 * eps) + 2 * gamma<T>(dv + 2) + gamma<T>(std::max(nq, nk) + 2) + 16 * eps);
  }
  return errors;
}

/// max over elements of |got - want| / bound (bound + the type's smallest normal), with the worst element.
template <class T>
void check_within(const Matrix<T>& got, const Matrix<Wide>& want, const Matrix<Wide>& bound, const std::string& what,
                  Wide relative = 0) {
  REQUIRE(got.rows() == want.rows());
  REQUIRE(got.cols() == want.cols());
  Wide worst = 0;
  Index wi = 0, wj = 0;
  for (Index i = 0; i < got.rows(); ++i)
    for (Index j = 0; j < got.cols(); ++j) {
      const Wide tol = bound(i, j) + relative * (1 + std::fabs(want(i, j))) + std::numeric_limits<T>::min();
      const Wide ratio = std::fabs(Wide(got(i, j)) - want(i, j)) / tol;
      if (!(ratio <= worst)) worst = ratio, wi = i, wj = j;
    }
  INFO(what << ": worst (" << wi << ", " << wj << ") got " << double(got(wi, wj)) << " want "
            << double(want(wi, wj)) << ", error / tolerance " << double(worst));
  CHECK(worst <= 1);
}

/// The library's forward (O and LSE) and backward for one call.
template <class T>
sdpa::AttentionGradients<T> library_gradients(const Matrix<T>& Q, const Matrix<T>& K, const Matrix<T>& V,
                                              const Matrix<T>& dO, const sdpa::Options& options) {
  Matrix<T> O(Q.rows(), V.cols());
  sdpa::Vector<T> lse(Q.rows());
  sdpa::attention_into(Q, K, V, O, lse, options);
  return sdpa::attention_backward(Q, K, V, O, lse, dO, options);
}

/// Named mask and variant cases over nq queries and nk keys (bias values drawn from `gen`).
std::vector<std::pair<std::string, MaskSpec>> cases(Index nq, Index nk, std::mt19937_64& gen) {
  std::vector<std::pair<std::string, MaskSpec>> out;
  out.push_back({"plain", MaskSpec{}});
  MaskSpec causal;
  causal.causal = true;
  out.push_back({"causal", causal});
  MaskSpec boolean;
  boolean.allowed = random_matrix<double>(nq, nk, gen).unaryExpr([](double x) { return x > -0.4; });
  boolean.allowed.row(0).setConstant(false);  // a fully masked row: gradient 0
  out.push_back({"bool mask with a fully masked row", boolean});
  MaskSpec bias;
  bias.bias = random_matrix<double>(nq, nk, gen, -2, 2);
  out.push_back({"bias", bias});
  MaskSpec row_bias;
  row_bias.bias = random_matrix<double>(1, nk, gen, -2, 2);
  row_bias.causal = true;
  out.push_back({"1 x Nk bias, causal", row_bias});
  MaskSpec lengths;
  for (Index i = 0; i < nq; ++i) lengths.lengths.push_back(i == 1 ? 0 : (i * 7) % (nk + 1));
  out.push_back({"key lengths", lengths});
  MaskSpec window;
  window.window_left = 3;
  window.window_right = 1;
  out.push_back({"window", window});
  MaskSpec alibi;
  alibi.alibi = true;
  alibi.slope = 0.25;
  alibi.causal = true;
  out.push_back({"ALiBi, causal", alibi});
  MaskSpec softcap;
  softcap.softcap = 1.5;
  out.push_back({"soft cap", softcap});
  MaskSpec sink;
  sink.has_sink = true;
  sink.sink = 0.7;
  sink.lengths = {nk / 2};
  out.push_back({"sink, key lengths", sink});
  MaskSpec all = bias;
  all.causal = true;
  all.softcap = 2.0;
  all.alibi = true;
  all.slope = 0.1;
  all.has_sink = true;
  all.sink = -0.3;
  all.window_left = 5;
  out.push_back({"everything", all});
  return out;
}

}  // namespace

TEST_CASE("the test's gradient oracle matches central finite differences", "[backward]") {
  auto gen = rng(0xbac1);
  const Index nq = 5, nk = 7, dk = 4, dv = 3;
  const Matrix<Wide> Q = random_matrix<Wide>(nq, dk, gen, -1.5, 1.5), K = random_matrix<Wide>(nk, dk, gen, -1.5, 1.5);
  const Matrix<Wide> V = random_matrix<Wide>(nk, dv, gen), dO = random_matrix<Wide>(nq, dv, gen);
  const double scale = 0.6;
  for (const auto& [name, mask] : cases(nq, nk, gen)) {
    INFO(name);
    const ExpectedGradients g = expected_gradients(Q, K, V, dO, scale, mask);
    const auto loss = [&](const Matrix<Wide>& q, const Matrix<Wide>& k, const Matrix<Wide>& v, const MaskSpec& m) {
      return (reference(q, k, v, scale, m).out.array() * dO.array()).sum();
    };
    const Wide h = 1e-5L;
    const auto numeric = [&](auto perturbed) {  // (L(x + h) - L(x - h)) / 2h
      return (perturbed(h) - perturbed(-h)) / (2 * h);
    };
    const auto check = [&](Wide analytic, Wide finite_difference) {
      CHECK(double(std::fabs(analytic - finite_difference)) <= 1e-8 * (1 + double(std::fabs(analytic))));
    };
    for (Index i = 0; i < nq; ++i)
      for (Index c = 0; c < dk; ++c)
        check(g.dq(i, c), numeric([&](Wide d) { Matrix<Wide> q = Q; q(i, c) += d; return loss(q, K, V, mask); }));
    for (Index j = 0; j < nk; ++j) {
      for (Index c = 0; c < dk; ++c)
        check(g.dk(j, c), numeric([&](Wide d) { Matrix<Wide> k = K; k(j, c) += d; return loss(Q, k, V, mask); }));
      for (Index c = 0; c < dv; ++c)
        check(g.dv(j, c), numeric([&](Wide d) { Matrix<Wide> v = V; v(j, c) += d; return loss(Q, K, v, mask); }));
    }
    for (Index i = 0; i < g.dbias.rows(); ++i)
      for (Index j = 0; j < nk; ++j)
        check(g.dbias(i, j), numeric([&](Wide d) {
          MaskSpec m = mask;
          m.bias(i, j) += double(d);
          return loss(Q, K, V, m);
        }));
    if (mask.has_sink)
      check(g.dsink, numeric([&](Wide d) {
        MaskSpec m = mask;
        m.sink += double(d);
        return loss(Q, K, V, m);
      }));
  }
}

TEST_CASE("backward in double: every path, every option, against the oracle", "[backward]") {
  auto gen = rng(0xbac2);
  // (nq, nk) with more keys than queries and fewer; tiny forced tiles reach every remainder
  for (const auto& [nq, nk] : std::vector<std::pair<Index, Index>>{{5, 9}, {9, 4}, {23, 37}, {1, 9}}) {
    const Index dk = 6, dv = 5;
    const Matrix<double> Q = random_matrix<double>(nq, dk, gen, -1.5, 1.5), K = random_matrix<double>(nk, dk, gen, -1.5, 1.5);
    const Matrix<double> V = random_matrix<double>(nk, dv, gen), dO = random_matrix<double>(nq, dv, gen);
    for (const auto& [name, mask] : cases(nq, nk, gen))
      for (const sdpa::Kernel kernel : all_kernels())
        for (const sdpa::BlockConfig blocks : {sdpa::BlockConfig{}, sdpa::BlockConfig{2, 3}}) {
          INFO(name << ", " << sdpa_test::name(kernel) << ", " << nq << "x" << nk << ", blocks " << blocks.query_rows << "x"
                    << blocks.key_rows);
          sdpa::Options options = mask.options(kernel);
          options.scale = 0.45;
          options.blocks = blocks;
          const ExpectedGradients want = expected_gradients(Q, K, V, dO, 0.45, mask);
          const sdpa::AttentionGradients<double> got = library_gradients(Q, K, V, dO, options);
          const auto zero = [](const Matrix<Wide>& m) { return Matrix<Wide>::Zero(m.rows(), m.cols()); };
          check_within(got.dQ, want.dq, zero(want.dq), "dQ", 1e-11);
          check_within(got.dK, want.dk, zero(want.dk), "dK", 1e-11);
          check_within(got.dV, want.dv, zero(want.dv), "dV", 1e-11);
          if (mask.bias.size() != 0) check_within(got.dbias, want.dbias, zero(want.dbias), "dbias", 1e-11);
          if (mask.has_sink) {
            REQUIRE(got.dsinks.size() == 1);
            CHECK(std::fabs(got.dsinks[0] - double(want.dsink)) <= 1e-11 * (1 + std::fabs(double(want.dsink))));
          }
        }
  }
}

TEST_CASE("backward in float: every path within the derived tolerance", "[backward]") {
  auto gen = rng(0xbac3);
  struct Shape { Index nq, nk, dk, dv; };
  // the last: more than one default tile of queries and of keys at d = 64 (fewer rows where
  // the oracle is software: kSoftwareWide)
  const Shape largest = kSoftwareWide ? Shape{70, 97, 64, 64} : Shape{130, 97, 64, 64};
  for (const Shape s : {Shape{7, 13, 8, 8}, Shape{70, 150, 32, 16}, Shape{33, 300, 20, 36}, largest}) {
    const Matrix<float> Q = random_matrix<float>(s.nq, s.dk, gen, -2, 2), K = random_matrix<float>(s.nk, s.dk, gen, -2, 2);
    const Matrix<float> V = random_matrix<float>(s.nk, s.dv, gen), dO = random_matrix<float>(s.nq, s.dv, gen);
    const double scale = 1.0 / std::sqrt(double(s.dk));
    for (const auto& [name, mask] : cases(s.nq, s.nk, gen)) {
      const Expected e = reference(Q, K, V, scale, mask);
      const ExpectedGradients want =
          expected_gradients(Q, K, V, dO, scale, mask, weight_errors<float>(e, s.nq, s.nk, s.dk, s.dv));
      // The float backward is given the exact O and LSE, rounded to float: its own error only.
      const Matrix<float> O = e.out.cast<float>();
      sdpa::Vector<float> lse(s.nq);
      for (Index i = 0; i < s.nq; ++i) lse[i] = float(e.lse[std::size_t(i)]);
      for (const sdpa::Kernel kernel : all_kernels())
        for (const sdpa::BlockConfig blocks : {sdpa::BlockConfig{}, sdpa::BlockConfig{5, 17}}) {
          INFO(name << ", " << sdpa_test::name(kernel) << ", " << s.nq << "x" << s.nk << " d " << s.dk << "/" << s.dv
                    << ", blocks " << blocks.query_rows << "x" << blocks.key_rows);
          sdpa::Options options = mask.options(kernel);
          options.blocks = blocks;
          const sdpa::AttentionGradients<float> got = sdpa::attention_backward(Q, K, V, O, lse, dO, options);
          check_within(got.dQ, want.dq, want.dq_bound, "dQ");
          check_within(got.dK, want.dk, want.dk_bound, "dK");
          check_within(got.dV, want.dv, want.dv_bound, "dV");
          if (mask.bias.size() != 0) check_within(got.dbias, want.dbias, want.dbias_bound, "dbias");
          if (mask.has_sink)
            CHECK(std::fabs(Wide(got.dsinks[0]) - want.dsink) <= want.dsink_bound + std::numeric_limits<float>::min());
        }
    }
  }
}

TEST_CASE("backward matches PyTorch's autograd on the golden gradients", "[backward]") {
  for (const char* file : {"grad_small.txt", "grad_bias_scale.txt", "grad_bool_mask.txt", "grad_causal_nq5_nk9.txt",
                           "grad_causal_nq6_nk3.txt", "grad_large_logits.txt"}) {
    const Golden g = load_golden(file);
    const Matrix<double>&Q = g["Q"], &K = g["K"], &V = g["V"], &dO = g["dO"];
    MaskSpec mask;
    mask.causal = g.scalar("causal", 0) != 0;
    if (g.has("mask")) mask.allowed = g["mask"].unaryExpr([](double x) { return x != 0; });
    if (g.has("bias")) mask.bias = g["bias"];
    const double scale = g.scalar("scale", 1.0 / std::sqrt(double(Q.cols())));
    sdpa::Vector<double> lse = g["lse"].row(0).transpose();
    const Matrix<float> q = Q.cast<float>(), k = K.cast<float>(), v = V.cast<float>(), d_out = dO.cast<float>(),
                        o = g["out"].cast<float>();
    sdpa::Vector<float> lse_float = lse.cast<float>();
    const Expected e = reference(q, k, v, scale, mask);
    const ExpectedGradients bounds =
        expected_gradients(q, k, v, d_out, scale, mask, weight_errors<float>(e, q.rows(), k.rows(), q.cols(), v.cols()));
    for (const sdpa::Kernel kernel : all_kernels()) {
      INFO(file << ", " << sdpa_test::name(kernel));
      sdpa::Options options = mask.options(kernel);
      options.scale = scale;
      const auto exact = [](const Matrix<double>& m) { return m.cast<Wide>(); };
      const auto none = [](const Matrix<double>& m) { return Matrix<Wide>::Zero(m.rows(), m.cols()); };
      const auto d = sdpa::attention_backward(Q, K, V, g["out"], lse, dO, options);
      check_within(d.dQ, exact(g["dQ"]), none(g["dQ"]), "dQ, double", 1e-12);
      check_within(d.dK, exact(g["dK"]), none(g["dK"]), "dK, double", 1e-12);
      check_within(d.dV, exact(g["dV"]), none(g["dV"]), "dV, double", 1e-12);
      if (g.has("dbias")) check_within(d.dbias, exact(g["dbias"]), none(g["dbias"]), "dbias, double", 1e-12);
      // float, against PyTorch's float64 answer within float's derived bound
      const auto f = sdpa::attention_backward(q, k, v, o, lse_float, d_out, options);
      check_within(f.dQ, exact(g["dQ"]), bounds.dq_bound, "dQ, float");
      check_within(f.dK, exact(g["dK"]), bounds.dk_bound, "dK, float");
      check_within(f.dV, exact(g["dV"]), bounds.dv_bound, "dV, float");
      if (g.has("dbias")) check_within(f.dbias, exact(g["dbias"]), bounds.dbias_bound, "dbias, float");
    }
  }
}

TEST_CASE("batched backward: grouped-query heads match PyTorch's golden gradients", "[backward]") {
  const Golden g = load_golden("grad_gqa.txt");
  const Index hq = Index(g.scalar("heads_q", 0)), hkv = Index(g.scalar("heads_kv", 0));
  const Index n = g["Q0"].rows(), d = g["Q0"].cols();
  for (const sdpa::Kernel kernel : all_kernels()) {
    INFO(sdpa_test::name(kernel));
    // [1, N, H, d] buffers (the projected layout), filled head by head from the file
    Matrix<double> q(n, hq * d), o(n, hq * d), d_out(n, hq * d), k(n, hkv * d), v(n, hkv * d);
    for (Index h = 0; h < hq; ++h) {
      q.middleCols(h * d, d) = g["Q" + std::to_string(h)];
      d_out.middleCols(h * d, d) = g["dO" + std::to_string(h)];
    }
    for (Index h = 0; h < hkv; ++h) {
      k.middleCols(h * d, d) = g["K" + std::to_string(h)];
      v.middleCols(h * d, d) = g["V" + std::to_string(h)];
    }
    using View = sdpa::TensorView<const double>;
    using Out = sdpa::TensorView<double>;
    sdpa::Options options;
    options.kernel = kernel;
    options.causal = g.scalar("causal", 0) != 0;
    Matrix<double> lse(hq, n), dq(n, hq * d), dk(n, hkv * d), dv(n, hkv * d);
    sdpa::attention<double, double>(View::bnhd(q.data(), 1, n, hq, d), View::bnhd(k.data(), 1, n, hkv, d),
                                    View::bnhd(v.data(), 1, n, hkv, d), Out::bnhd(o.data(), 1, n, hq, d),
                                    Out::bhnd(lse.data(), 1, hq, n, 1), options);
    sdpa::attention_backward<double>(View::bnhd(q.data(), 1, n, hq, d), View::bnhd(k.data(), 1, n, hkv, d),
                                     View::bnhd(v.data(), 1, n, hkv, d), View::bnhd(o.data(), 1, n, hq, d),
                                     View::bhnd(lse.data(), 1, hq, n, 1), View::bnhd(d_out.data(), 1, n, hq, d),
                                     Out::bnhd(dq.data(), 1, n, hq, d), Out::bnhd(dk.data(), 1, n, hkv, d),
                                     Out::bnhd(dv.data(), 1, n, hkv, d), options);
    const auto none = [&] { return Matrix<Wide>::Zero(n, d); };
    for (Index h = 0; h < hq; ++h) {
      const std::string i = std::to_string(h);
      check_within(Matrix<double>(o.middleCols(h * d, d)), g["out" + i].cast<Wide>(), none(), "out" + i, 1e-12);
      check_within(Matrix<double>(dq.middleCols(h * d, d)), g["dQ" + i].cast<Wide>(), none(), "dQ" + i, 1e-12);
    }
    for (Index h = 0; h < hkv; ++h) {
      const std::string i = std::to_string(h);
      check_within(Matrix<double>(dk.middleCols(h * d, d)), g["dK" + i].cast<Wide>(), none(), "dK" + i, 1e-12);
      check_within(Matrix<double>(dv.middleCols(h * d, d)), g["dV" + i].cast<Wide>(), none(), "dV" + i, 1e-12);
    }
  }
}

TEST_CASE("batched backward: every layout and batched mask gives the 2-D calls' gradients", "[backward]") {
  auto gen = rng(0xbac6);
  const Index batch = 2, hq = 4, hkv = 2, nq = 13, nk = 21, dk = 16, dv = 8, group = hq / hkv;
  const auto as_matrix = [](const sdpa::MatrixView<const float>& m) {
    Matrix<float> out(m.rows, m.cols);
    for (Index i = 0; i < m.rows; ++i)
      for (Index c = 0; c < m.cols; ++c) out(i, c) = m(i, c);
    return out;
  };
  // a fused [B, N, 3, H, d] buffer for Q, K, V (nq == nk there) and its gradient, and [B, H, N, d] ones
  for (const bool fused : {false, true}) {
    INFO((fused ? "fused QKV (self-attention, MHA)" : "bhnd, grouped-query"));
    const Index heads_kv = fused ? hq : hkv, keys = fused ? nq : nk, d = fused ? dk : 0;
    const Index dvf = fused ? dk : dv;
    Matrix<float> qkv = random_matrix<float>(batch * nq, 3 * hq * dk, gen);
    Matrix<float> q_buf = random_matrix<float>(batch * hq * nq, dk, gen), k_buf = random_matrix<float>(batch * heads_kv * keys, dk, gen),
                  v_buf = random_matrix<float>(batch * heads_kv * keys, dvf, gen);
    using View = sdpa::TensorView<const float>;
    using Out = sdpa::TensorView<float>;
    View q, k, v;
    if (fused) {
      const sdpa::FusedQKV<const float> parts(qkv.data(), batch, nq, hq, d);
      q = parts.q, k = parts.k, v = parts.v;
    } else {
      q = View::bhnd(q_buf.data(), batch, hq, nq, dk);
      k = View::bhnd(k_buf.data(), batch, heads_kv, keys, dk);
      v = View::bhnd(v_buf.data(), batch, heads_kv, keys, dvf);
    }
    Matrix<float> o_buf(batch * hq * nq, dvf), d_out = random_matrix<float>(batch * hq * nq, dvf, gen), lse(batch * hq, nq);
    const Out o = Out::bhnd(o_buf.data(), batch, hq, nq, dvf);
    sdpa::Options options;
    options.sequence_lengths = {keys - 3, keys};
    Matrix<bool> allowed = random_matrix<float>(hq, keys, gen).unaryExpr([](float x) { return x > -0.5f; });
    options.batch_mask = sdpa::TensorView<const bool>{allowed.data(), 1, hq, 1, keys, 0, keys, 0};  // [1, H, 1, Nk]
    options.alibi_slopes = {0.5, 0.25, 0.125, 0.0625};
    options.sinks = {0.3, -0.2, 0.1, 0.5};
    options.blocks = {5, 7};
    sdpa::attention<float, float>(q, k, v, o, Out::bhnd(lse.data(), batch, hq, nq, 1), options);
    Matrix<float> dqkv(batch * nq, 3 * hq * dk), dq_buf(batch * hq * nq, dk), dk_buf(batch * heads_kv * keys, dk),
                  dv_buf(batch * heads_kv * keys, dvf);
    Out dq, dkv, dvv;
    if (fused) {
      const sdpa::FusedQKV<float> parts(dqkv.data(), batch, nq, hq, d);
      dq = parts.q, dkv = parts.k, dvv = parts.v;
    } else {
      dq = Out::bhnd(dq_buf.data(), batch, hq, nq, dk);
      dkv = Out::bhnd(dk_buf.data(), batch, heads_kv, keys, dk);
      dvv = Out::bhnd(dv_buf.data(), batch, heads_kv, keys, dvf);
    }
    std::vector<float> dsinks(hq);
    for (const sdpa::Kernel kernel : {sdpa::Kernel::Simd, sdpa::Kernel::Blocked, sdpa::Kernel::Reference}) {
      INFO(sdpa_test::name(kernel));
      options.kernel = kernel;
      // NaN before each path's call: what a path left unwritten cannot pass for the last one's
      for (Matrix<float>* m : {&dqkv, &dq_buf, &dk_buf, &dv_buf}) m->setConstant(std::numeric_limits<float>::quiet_NaN());
      std::fill(dsinks.begin(), dsinks.end(), std::numeric_limits<float>::quiet_NaN());
      sdpa::attention_backward<float>(q, k, v, o, View::bhnd(lse.data(), batch, hq, nq, 1),
                                      View::bhnd(d_out.data(), batch, hq, nq, dvf), dq, dkv, dvv, options,
                                      dsinks.data());
      std::vector<float> want_dsinks(hq, 0.0f);
      // the same heads through the 2-D API, summed over each group in head order
      for (Index b = 0; b < batch; ++b)
        for (Index g = 0; g < heads_kv; ++g) {
          const Index heads_here = fused ? 1 : group;
          Matrix<float> dk_sum = Matrix<float>::Zero(keys, dk), dv_sum = Matrix<float>::Zero(keys, dvf);
          for (Index h = g * heads_here; h < (g + 1) * heads_here; ++h) {
            sdpa::Options head = options;
            head.batch_mask = {};
            head.sequence_lengths.clear();
            head.key_lengths = {options.sequence_lengths[std::size_t(b)]};
            head.mask = Matrix<bool>(allowed.row(h));
            head.alibi_slopes = {options.alibi_slopes[std::size_t(h)]};
            head.sinks = {options.sinks[std::size_t(h)]};
            const Matrix<float> qh = as_matrix(q.head(b, h)), kh = as_matrix(k.head(b, g)), vh = as_matrix(v.head(b, g));
            const Matrix<float> oh = as_matrix(View(o).head(b, h));
            const sdpa::Vector<float> lse_h = lse.row(b * hq + h).transpose();
            const auto want = sdpa::attention_backward(qh, kh, vh, oh, lse_h,
                                                       as_matrix(View::bhnd(d_out.data(), batch, hq, nq, dvf).head(b, h)), head);
            CHECK(as_matrix(View(dq).head(b, h)) == want.dQ);
            want_dsinks[std::size_t(h)] += want.dsinks[0];
            if (h == g * heads_here) dk_sum = want.dK, dv_sum = want.dV;
            else dk_sum += want.dK, dv_sum += want.dV;
          }
          CHECK(as_matrix(View(dkv).head(b, g)) == dk_sum);
          CHECK(as_matrix(View(dvv).head(b, g)) == dv_sum);
        }
      CHECK(dsinks == want_dsinks);
    }
  }
}

TEST_CASE("SelfAttention::backward matches PyTorch's golden layer gradients", "[backward][layer]") {
  for (const char* file : {"grad_layer_cross_two_heads.txt", "grad_layer_four_heads_causal.txt"}) {
    const Golden g = load_golden(file);
    sdpa::AttentionWeights<double> w;
    w.Wq = g["Wq"], w.Wk = g["Wk"], w.Wv = g["Wv"], w.Wo = g["Wo"];
    w.bq = g["bq"], w.bk = g["bk"], w.bv = g["bv"], w.bo = g["bo"];
    const sdpa::SelfAttention<double> layer(w, Index(g.scalar("heads", 1)));
    const bool cross = g.has("memory");
    for (const sdpa::Kernel kernel : all_kernels()) {
      INFO(file << ", " << sdpa_test::name(kernel));
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = g.scalar("causal", 0) != 0;
      const sdpa::LayerGradients<double> d =
          cross ? layer.backward(g["X"], g["memory"], g["dY"], options) : layer.backward(g["X"], g["dY"], options);
      const auto check = [&](const Matrix<double>& got, const char* name) {
        check_within(got, g[name].cast<Wide>(), Matrix<Wide>::Zero(got.rows(), got.cols()), name, 1e-12);
      };
      check(d.dX, "dX");
      if (cross) check(d.dmemory, "dmemory");
      else CHECK(d.dmemory.size() == 0);
      check(d.weights.Wq, "dWq"), check(d.weights.Wk, "dWk"), check(d.weights.Wv, "dWv"), check(d.weights.Wo, "dWo");
      check(d.weights.bq, "dbq"), check(d.weights.bk, "dbk"), check(d.weights.bv, "dbv"), check(d.weights.bo, "dbo");
    }
  }
}

TEST_CASE("SelfAttention::backward matches central finite differences: grouped-query heads, masks", "[backward][layer]") {
  auto gen = rng(0xbac7);
  const Index d_model = 8, heads = 4, kv_heads = 2, n = 6;
  auto layer = sdpa::SelfAttention<double>::random(d_model, heads, 11, true, true, kv_heads);
  sdpa::AttentionWeights<double> w = layer.weights();
  w.bq = random_matrix<double>(1, w.Wq.cols(), gen), w.bk = random_matrix<double>(1, w.Wk.cols(), gen);
  w.bv = random_matrix<double>(1, w.Wv.cols(), gen), w.bo = random_matrix<double>(1, w.Wo.cols(), gen);
  const Matrix<double> X = random_matrix<double>(n, d_model, gen), dY = random_matrix<double>(n, d_model, gen);
  sdpa::Options options;
  options.causal = true;
  options.key_lengths = {4, 4, 5, 5, 6, 6};
  options.alibi_slopes = {0.5, 0.25, 0.125, 0.0625};
  for (const sdpa::Kernel kernel : {sdpa::Kernel::Reference, sdpa::Kernel::Blocked}) {
    INFO(sdpa_test::name(kernel));
    options.kernel = kernel;
    const sdpa::SelfAttention<double> at(w, heads, kv_heads);
    const sdpa::LayerGradients<double> g = at.backward(X, dY, options);
    const auto loss = [&](const sdpa::AttentionWeights<double>& weights, const Matrix<double>& x) {
      return (sdpa::SelfAttention<double>(weights, heads, kv_heads).forward(x, options).array() * dY.array()).sum();
    };
    const double h = 1e-6;
    const auto check_all = [&](auto&& get, const auto& analytic, const char* name) {
      INFO(name);
      double worst = 0;
      for (Index i = 0; i < analytic.size(); ++i) {
        sdpa::AttentionWeights<double> plus = w, minus = w;
        Matrix<double> x_plus = X, x_minus = X;
        get(plus, x_plus).data()[i] += h;
        get(minus, x_minus).data()[i] -= h;
        const double numeric = (loss(plus, x_plus) - loss(minus, x_minus)) / (2 * h);
        worst = std::max(worst, std::fabs(numeric - analytic.data()[i]) / (1 + std::fabs(analytic.data()[i])));
      }
      CHECK(worst <= 1e-7);
    };
    using W = sdpa::AttentionWeights<double>;
    check_all([](W&, Matrix<double>& x) -> auto& { return x; }, g.dX, "dX");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.Wq; }, g.weights.Wq, "dWq");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.Wk; }, g.weights.Wk, "dWk");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.Wv; }, g.weights.Wv, "dWv");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.Wo; }, g.weights.Wo, "dWo");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.bq; }, g.weights.bq, "dbq");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.bk; }, g.weights.bk, "dbk");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.bv; }, g.weights.bv, "dbv");
    check_all([](W& v, Matrix<double>&) -> auto& { return v.bo; }, g.weights.bo, "dbo");
  }
  require_invalid([&] { layer.backward(X, Matrix<double>(dY.leftCols(5))); }, {"SelfAttention::backward", "dY is 6x5"});
}

TEST_CASE("backward: gradients are bit-identical for any thread count and any slabs' split", "[backward]") {
  auto gen = rng(0xbac4);
  const Index nq = 300, nk = 700, dk = 32, dv = 48;
  const Matrix<float> Q = random_matrix<float>(nq, dk, gen), K = random_matrix<float>(nk, dk, gen);
  const Matrix<float> V = random_matrix<float>(nk, dv, gen), dO = random_matrix<float>(nq, dv, gen);
  const Index budget = sdpa::detail::backward_partial_bytes();
  for (const sdpa::Kernel kernel : {sdpa::Kernel::Simd, sdpa::Kernel::Blocked})
    for (const bool causal : {false, true}) {
      INFO(sdpa_test::name(kernel) << (causal ? ", causal" : ""));
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = causal;
      options.bias = random_matrix<float>(1, nk, gen);
      options.threads = 1;
      const auto one = library_gradients(Q, K, V, dO, options);
      for (const int threads : {2, 3}) {
        options.threads = threads;
        const auto many = library_gradients(Q, K, V, dO, options);
        CHECK(many.dQ == one.dQ);
        CHECK(many.dK == one.dK);
        CHECK(many.dV == one.dV);
        CHECK(many.dbias == one.dbias);
      }
      // a pool that runs the items last first, one per call
      options.parallel_for = [](Index count, const std::function<void(Index, Index)>& body) {
        for (Index item = count; item-- > 0;) body(item, item + 1);
      };
      const auto reversed = library_gradients(Q, K, V, dO, options);
      CHECK(reversed.dQ == one.dQ);
      CHECK(reversed.dK == one.dK);
      CHECK(reversed.dV == one.dV);
      CHECK(reversed.dbias == one.dbias);
      options.parallel_for = nullptr;
      // partials for only a few query rows at a time: several slabs, the same sums in the same order
      sdpa::detail::backward_partial_bytes() = 3 * 4 * 64 * Index(sizeof(float)) * 8;
      const auto slabs = library_gradients(Q, K, V, dO, options);
      sdpa::detail::backward_partial_bytes() = budget;
      CHECK(slabs.dQ == one.dQ);
      CHECK(slabs.dK == one.dK);
      CHECK(slabs.dV == one.dV);
    }
}

TEST_CASE("backward: a key of weight 0 adds nothing, whatever K and V hold there", "[backward]") {
  auto gen = rng(0xbac5);
  const Index nq = 19, nk = 40, dk = 16, dv = 16;
  Matrix<float> Q = random_matrix<float>(nq, dk, gen), K = random_matrix<float>(nk, dk, gen);
  Matrix<float> V = random_matrix<float>(nk, dv, gen);
  const Matrix<float> dO = random_matrix<float>(nq, dv, gen);
  MaskSpec mask;
  mask.lengths = {27};
  const Expected e = reference(Q, K, V, 1.0 / 4, mask);
  const ExpectedGradients want = expected_gradients(Q, K, V, dO, 1.0 / 4, mask, weight_errors<float>(e, nq, nk, dk, dv));
  K.bottomRows(nk - 27).setConstant(std::numeric_limits<float>::quiet_NaN());  // padding: never seen
  V.bottomRows(nk - 27).setConstant(std::numeric_limits<float>::infinity());
  for (const sdpa::Kernel kernel : all_kernels()) {
    INFO(sdpa_test::name(kernel));
    const sdpa::AttentionGradients<float> got = library_gradients(Q, K, V, dO, mask.options(kernel));
    check_within(got.dQ, want.dq, want.dq_bound, "dQ");
    check_within(Matrix<float>(got.dK.topRows(27)), Matrix<Wide>(want.dk.topRows(27)),
                 Matrix<Wide>(want.dk_bound.topRows(27)), "dK");
    CHECK(got.dK.bottomRows(nk - 27).isZero(0));
    CHECK(got.dV.bottomRows(nk - 27).isZero(0));
  }
}

TEST_CASE("backward: no queries, or no keys, on every path", "[backward]") {
  auto gen = rng(0xbac8);
  for (const sdpa::Kernel kernel : all_kernels())
    for (const auto& [nq, nk] : std::vector<std::pair<Index, Index>>{{0, 5}, {4, 0}, {0, 0}}) {
      INFO(sdpa_test::name(kernel) << ", " << nq << "x" << nk);
      const Matrix<float> Q = random_matrix<float>(nq, 8, gen), K = random_matrix<float>(nk, 8, gen);
      const Matrix<float> V = random_matrix<float>(nk, 3, gen), dO = random_matrix<float>(nq, 3, gen);
      sdpa::Options options;
      options.kernel = kernel;
      const sdpa::AttentionGradients<float> g = library_gradients(Q, K, V, dO, options);
      CHECK(g.dQ.rows() == nq);
      CHECK(g.dK.rows() == nk);
      CHECK(g.dQ.isZero(0));  // no key: nothing to attend to, a gradient of 0
      CHECK(g.dK.isZero(0));  // no query: no key is ever seen
      CHECK(g.dV.isZero(0));
      // An Nq x Nk bias (no rows when Nq = 0, but a view all the same) and a 1 x Nk one, whose
      // gradient sums over no queries: 0. (The fuzzer found the reference writing row 0 of a
      // 0 x Nk dbias.) Views over buffers, so that neither is a null, absent, bias.
      for (const Index bias_rows : {nq, Index(1)}) {
        std::vector<float> ones(std::size_t(std::max<Index>(1, bias_rows * nk)), 1.0f);
        std::vector<float> dbias(ones.size(), std::numeric_limits<float>::quiet_NaN());
        options.bias = sdpa::Bias(sdpa::MatrixView<const float>(ones.data(), bias_rows, nk, nk));
        Matrix<float> O(nq, 3), dq(nq, 8), dk(nk, 8), dv(nk, 3);
        sdpa::Vector<float> lse(nq);
        sdpa::attention_into(Q, K, V, O, lse, options);
        sdpa::ExtraGradients<float> extra;
        extra.dbias = sdpa::MatrixView<float>(dbias.data(), bias_rows, nk, nk);
        sdpa::attention_backward_into(Q, K, V, O, lse, dO, dq, dk, dv, options, extra);
        CHECK(dq.isZero(0));
        CHECK(dk.isZero(0));
        CHECK(dv.isZero(0));
        for (Index e = 0; e < bias_rows * nk; ++e) CHECK(dbias[std::size_t(e)] == 0.0f);
        if (bias_rows * nk == 0) CHECK(std::isnan(dbias[0]));  // nothing written past the view
      }
    }
}

TEST_CASE("backward: bad arguments are named, and nothing is written", "[backward][errors]") {
  const Matrix<float> Q = Matrix<float>::Ones(4, 8), K = Matrix<float>::Ones(6, 8), V = Matrix<float>::Ones(6, 5);
  const Matrix<float> O = Matrix<float>::Ones(4, 5), dO = Matrix<float>::Ones(4, 5);
  const sdpa::Vector<float> lse = sdpa::Vector<float>::Zero(4);
  Matrix<float> dQ = Matrix<float>::Constant(4, 8, 7), dK = Matrix<float>::Constant(6, 8, 7),
                dV = Matrix<float>::Constant(6, 5, 7);
  const auto untouched = [&] { return (dQ.array() == 7).all() && (dK.array() == 7).all() && (dV.array() == 7).all(); };
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O.leftCols(4), lse, dO, dQ, dK, dV); },
                  {"attention_backward_into", "O is 4x4", "4x5"});
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO.topRows(3), dQ, dK, dV); }, {"dO is 3x5"});
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse.head(3), dO, dQ, dK, dV); }, {"lse is 3x1"});
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ.leftCols(7), dK, dV); },
                  {"dQ is 4x7", "4x8"});
  require_invalid([&] { sdpa::attention_backward_into(Q, K.topRows(5), V, O, lse, dO, dQ, dK, dV); }, {"K is 5x8"});
  Matrix<float> shared(6, 8);
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, shared, shared.leftCols(5)); },
                  {"dK", "overlaps", "dV"});
  Matrix<float> q_copy = Q;
  require_invalid([&] { sdpa::attention_backward_into(q_copy, K, V, O, lse, dO, q_copy, dK, dV); },
                  {"dQ", "overlaps Q"});
  Matrix<float> dbias(4, 6);
  sdpa::ExtraGradients<float> extra;
  extra.dbias = dbias;
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, {}, extra); },
                  {"dbias", "options.bias is empty"});
  sdpa::Options options;
  const Matrix<float> row_bias = Matrix<float>::Zero(1, 6);
  options.bias = row_bias;
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, options, extra); },
                  {"dbias is 4x6", "1x6"});
  Eigen::MatrixXf column_major_bias(4, 6);
  sdpa::ExtraGradients<float> strided;
  strided.dbias = sdpa::MatrixView<float>(column_major_bias);
  sdpa::Options full;
  const Matrix<float> full_bias = Matrix<float>::Zero(4, 6);
  full.bias = full_bias;
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, full, strided); },
                  {"dbias (4x6) has strides", "contiguous rows"});
  float dsink = 0;
  sdpa::ExtraGradients<float> sinks;
  sinks.dsinks = &dsink;
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, {}, sinks); },
                  {"dsinks", "options.sinks is empty"});
  options = {};
  options.sequence_lengths = {3};
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, options); },
                  {"options.sequence_lengths"});
  sdpa::Options with_sink;
  with_sink.sinks = {0.5};
  sdpa::ExtraGradients<float> into_sinks;
  into_sinks.dsinks = reinterpret_cast<float*>(with_sink.sinks.data());
  require_invalid([&] { sdpa::attention_backward_into(Q, K, V, O, lse, dO, dQ, dK, dV, with_sink, into_sinks); },
                  {"dsinks", "overlaps options.sinks"});
  CHECK(with_sink.sinks[0] == 0.5);
  // batched: dsinks over dQ's memory; the forward's LSEs over the bias they are computed with
  using View = sdpa::TensorView<const float>;
  using Out = sdpa::TensorView<float>;
  const View q = View::bhnd(Q.data(), 1, 1, 4, 8), k = View::bhnd(K.data(), 1, 1, 6, 8), v = View::bhnd(V.data(), 1, 1, 6, 5);
  require_invalid([&] {
    sdpa::attention_backward<float>(q, k, v, View::bhnd(O.data(), 1, 1, 4, 5), View::bhnd(lse.data(), 1, 1, 4, 1),
                                    View::bhnd(dO.data(), 1, 1, 4, 5), Out::bhnd(dQ.data(), 1, 1, 4, 8),
                                    Out::bhnd(dK.data(), 1, 1, 6, 8), Out::bhnd(dV.data(), 1, 1, 6, 5), with_sink,
                                    dQ.data());
  }, {"dQ overlaps dsinks"});
  Matrix<float> bias_storage = Matrix<float>::Zero(4, 6), out(4, 5);
  sdpa::Options biased;
  biased.bias = sdpa::Bias(sdpa::MatrixView<const float>(bias_storage.data(), 4, 6, 6));
  require_invalid([&] {
    sdpa::attention<float>(q, k, v, Out::bhnd(out.data(), 1, 1, 4, 5), Out::bhnd(bias_storage.data(), 1, 1, 4, 1), biased);
  }, {"lse", "overlaps", "bias"});
  CHECK(bias_storage.isZero(0));
  CHECK(untouched());
}

}  // namespace test_backward
