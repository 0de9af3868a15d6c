// Batched attention over 4-D views: layouts read in place, grouped-query heads, batch-scale
// masks, thread invariance, and the errors of bad shapes.
#include "catch.hpp"
#include "support.hpp"

namespace test_batched {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;
using sdpa::TensorView;

namespace {

/// [B, N, H, d] or [B, H, N, d] storage of random values, and a view of it as (b, h, n, f).
struct Tensor {
  std::vector<float> data;
  TensorView<float> view;
  Tensor(Index b, Index h, Index n, Index d, bool tokens_outer, std::mt19937_64& gen) : data(std::size_t(b * h * n * d)) {
    std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
    for (float& x : data) x = dist(gen);
    view = tokens_outer ? TensorView<float>::bnhd(data.data(), b, n, h, d) : TensorView<float>::bhnd(data.data(), b, h, n, d);
  }
};

Matrix<float> head(const TensorView<float>& t, Index b, Index h) {
  const sdpa::MatrixView<float> m = t.head(b, h);
  Matrix<float> out(m.rows, m.cols);
  for (Index i = 0; i < m.rows; ++i)
    for (Index j = 0; j < m.cols; ++j) out(i, j) = m(i, j);
  return out;
}

}  // namespace

TEST_CASE("batched attention equals the 2-D call head by head, in both layouts and a fused buffer", "[batched]") {
  auto gen = rng(1);
  const Index B = 2, H = 3, N = 37, M = 45, d = 16;
  for (const bool tokens_outer : {false, true})
    for (const sdpa::Kernel kernel : all_kernels())
      for (const bool causal : {false, true}) {
        Tensor q(B, H, N, d, tokens_outer, gen), k(B, H, M, d, tokens_outer, gen), v(B, H, M, d, tokens_outer, gen),
            o(B, H, N, d, tokens_outer, gen);
        sdpa::Options options;
        options.kernel = kernel;
        options.causal = causal;
        sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
        for (Index b = 0; b < B; ++b)
          for (Index h = 0; h < H; ++h) {
            CAPTURE(tokens_outer, name(kernel), causal, b, h);
            MaskSpec mask;
            mask.causal = causal;
            const Matrix<float> Q = head(q.view, b, h), K = head(k.view, b, h), V = head(v.view, b, h);
            check_attention(head(o.view, b, h), reference(Q, K, V, 0.25, mask), M, d, name(kernel));
            CHECK(head(o.view, b, h) == sdpa::attention(Q, K, V, options));  // same kernel, same bits
          }
      }
  // Q, K, V inside one [B, N, 3, H, d] projection buffer.
  std::vector<float> fused(std::size_t(B * N * 3 * H * d));
  std::uniform_real_distribution<float> dist(-1, 1);
  for (float& x : fused) x = dist(gen);
  const sdpa::FusedQKV<float> qkv(fused.data(), B, N, H, d);
  std::vector<float> out(std::size_t(B * N * H * d));
  const auto o = TensorView<float>::bnhd(out.data(), B, N, H, d);
  sdpa::attention<float>(qkv.q, qkv.k, qkv.v, o);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const Matrix<float> Q = head(qkv.q, b, h), K = head(qkv.k, b, h), V = head(qkv.v, b, h);
      check_attention(head(o, b, h), reference(Q, K, V, 0.25, MaskSpec{}), N, d, "fused");
    }
}

TEST_CASE("grouped-query attention equals repeating the key/value heads", "[batched]") {
  auto gen = rng(2);
  const Index B = 2, Hq = 6, N = 50, d = 24;
  for (const Index Hkv : {Index(1), Index(2), Index(3), Index(6)})
    for (const sdpa::Kernel kernel : all_kernels()) {
      Tensor q(B, Hq, N, d, true, gen), k(B, Hkv, N, d, true, gen), v(B, Hkv, N, d, true, gen), o(B, Hq, N, d, true, gen),
          k_rep(B, Hq, N, d, true, gen), v_rep(B, Hq, N, d, true, gen), o_rep(B, Hq, N, d, true, gen);
      for (Index b = 0; b < B; ++b)  // the explicit repetition GQA avoids
        for (Index h = 0; h < Hq; ++h)
          for (Index n = 0; n < N; ++n)
            for (Index f = 0; f < d; ++f) {
              k_rep.view.head(b, h)(n, f) = k.view.head(b, h / (Hq / Hkv))(n, f);
              v_rep.view.head(b, h)(n, f) = v.view.head(b, h / (Hq / Hkv))(n, f);
            }
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = true;
      sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
      sdpa::attention<float>(q.view, k_rep.view, v_rep.view, o_rep.view, options);
      CAPTURE(Hkv, name(kernel));
      CHECK(o.data == o_rep.data);
    }
}

TEST_CASE("batch masks broadcast over sizes of 1; sequence lengths pad each sequence", "[batched]") {
  auto gen = rng(3);
  const Index B = 3, H = 2, N = 20, M = 33, d = 8;
  Tensor q(B, H, N, d, false, gen), k(B, H, M, d, false, gen), v(B, H, M, d, false, gen), o(B, H, N, d, false, gen);
  // mask [1, H, N, M] (per head, same for every sequence), bias [B, 1, 1, M] (per sequence and key)
  std::vector<char> mask_storage(std::size_t(H * N * M));
  std::bernoulli_distribution coin(0.75);
  for (char& m : mask_storage) m = coin(gen);
  std::vector<float> bias_storage(std::size_t(B * M));
  std::uniform_real_distribution<float> dist(-2, 2);
  for (float& x : bias_storage) x = dist(gen);
  sdpa::Options options;
  options.batch_mask = {reinterpret_cast<const bool*>(mask_storage.data()), 1, H, N, M, 0, N * M, M};
  options.batch_bias = {bias_storage.data(), B, 1, 1, M, M, 0, 0};
  options.sequence_lengths = {33, 0, 17};
  for (const sdpa::Kernel kernel : all_kernels()) {
    options.kernel = kernel;
    sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        MaskSpec mask;
        mask.allowed = Matrix<bool>(N, M);
        for (Index i = 0; i < N; ++i)
          for (Index j = 0; j < M; ++j) mask.allowed(i, j) = mask_storage[std::size_t(h * N * M + i * M + j)] != 0;
        mask.bias = Matrix<double>(1, M);
        for (Index j = 0; j < M; ++j) mask.bias(0, j) = bias_storage[std::size_t(b * M + j)];
        mask.lengths.assign(1, options.sequence_lengths[std::size_t(b)]);
        CAPTURE(name(kernel), b, h);
        check_attention(head(o.view, b, h), reference(head(q.view, b, h), head(k.view, b, h), head(v.view, b, h), 1.0 / std::sqrt(8.0), mask),
                        M, d, name(kernel));
      }
  }
}

TEST_CASE("batched results do not depend on the thread count", "[batched][threads]") {
  auto gen = rng(4);
  const Index B = 2, H = 4, N = 130, d = 32;
  Tensor q(B, H, N, d, true, gen), k(B, 2, N, d, true, gen), v(B, 2, N, d, true, gen), o(B, H, N, d, true, gen);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    options.causal = true;
    options.threads = 1;
    sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
    const std::vector<float> serial = o.data;
    for (const int threads : {2, 3}) {
      options.threads = threads;
      sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
      CAPTURE(name(kernel), threads);
      CHECK(o.data == serial);
    }
  }
}

TEST_CASE("batched calls reject bad shapes, strides and masks, writing nothing", "[batched][errors]") {
  auto gen = rng(5);
  Tensor q(2, 4, 8, 16, false, gen), k(2, 3, 8, 16, false, gen), v(2, 3, 8, 16, false, gen), o(2, 4, 8, 16, false, gen);
  const std::vector<float> before = o.data;
  const auto fails = [&](const sdpa::Options& options, TensorView<float> qv, TensorView<float> kv, TensorView<float> vv,
                         TensorView<float> ov, const char* fragment) {
    std::string message;
    try {
      sdpa::attention<float>(qv, kv, vv, ov, options);
    } catch (const std::invalid_argument& e) {
      message = e.what();
    }
    INFO(message);
    CHECK(message.find(fragment) != std::string::npos);
    CHECK(o.data == before);
  };
  fails({}, q.view, k.view, v.view, o.view, "must be a multiple of key/value heads (3)");
  Tensor k2(2, 2, 8, 16, false, gen), v2(2, 2, 8, 16, false, gen), k1(1, 2, 8, 16, false, gen);
  fails({}, q.view, k1.view, v2.view, o.view, "batch sizes differ");
  fails({}, q.view, k2.view, v.view, o.view, "same number of heads");
  Tensor o_small(2, 4, 7, 16, false, gen);
  fails({}, q.view, k2.view, v2.view, o_small.view, "out must be [2, 4, 8, 16]");
  sdpa::Options lengths;
  lengths.sequence_lengths = {8};
  fails(lengths, q.view, k2.view, v2.view, o.view, "sequence_lengths has 1 entries for a batch of 2");
  std::vector<char> m(2 * 8 * 8, 1);
  sdpa::Options mask;
  mask.batch_mask = {reinterpret_cast<const bool*>(m.data()), 2, 2, 8, 8, 128, 64, 8};
  fails(mask, q.view, k2.view, v2.view, o.view, "options.batch_mask is [2, 2, 8, 8]");
  fails({}, q.view, k2.view, v2.view, q.view, "out overlaps Q");
}

TEST_CASE("grouped-query decoding reads each key/value head once for its group and matches", "[batched][decode]") {
  auto gen = rng(6);
  const Index Hq = 8, Hkv = 2, M = 2000, d = 64;
  for (const Index B : {Index(1), Index(2)})  // 2 groups (keys split across threads) and 4 groups (groups in parallel)
    for (const bool padded : {false, true}) {
      Tensor q(B, Hq, 1, d, true, gen), k(B, Hkv, M, d, true, gen), v(B, Hkv, M, d, true, gen), o(B, Hq, 1, d, true, gen);
      std::vector<char> mask_storage(std::size_t(B * M));
      std::bernoulli_distribution coin(0.8);
      for (char& m : mask_storage) m = coin(gen);
      sdpa::Options options;
      options.causal = true;  // one query: sees every cached key
      if (padded) {
        options.sequence_lengths.assign(std::size_t(B), 1500);
        options.batch_mask = {reinterpret_cast<const bool*>(mask_storage.data()), B, 1, 1, M, M, 0, 0};
      }
      for (const int threads : {1, 2}) {
        options.threads = threads;
        sdpa::attention<float>(q.view, k.view, v.view, o.view, options);
        for (Index b = 0; b < B; ++b)
          for (Index h = 0; h < Hq; ++h) {
            MaskSpec mask;
            if (padded) {
              mask.lengths.assign(1, 1500);
              mask.allowed = Matrix<bool>(1, M);
              for (Index j = 0; j < M; ++j) mask.allowed(0, j) = mask_storage[std::size_t(b * M + j)] != 0;
            }
            CAPTURE(B, padded, threads, b, h);
            check_attention(head(o.view, b, h),
                            reference(head(q.view, b, h), head(k.view, b, h / 4), head(v.view, b, h / 4), 0.125, mask),
                            M, d, "grouped decode");
          }
      }
    }
}

}  // namespace test_batched
