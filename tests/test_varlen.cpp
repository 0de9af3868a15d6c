// Packed variable-length sequences (attention_varlen): every sequence against the long-double
// reference of that sequence alone, on every path, with grouped heads, causal alignment,
// windows and the other variants; lengths of 0 and 1; determinism; bad offsets.
#include "catch.hpp"
#include "support.hpp"

namespace test_varlen {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

constexpr Index kHeads = 4, kKvHeads = 2, kDim = 16;

/// Packed [total, heads, d] buffers (row-major Matrix of total x heads d) for the lengths.
struct Packed {
  std::vector<Index> offsets_q{0}, offsets_k{0};
  Matrix<float> q, k, v, out;

  Packed(const std::vector<Index>& nq, const std::vector<Index>& nk, std::mt19937_64& gen) {
    for (std::size_t b = 0; b < nq.size(); ++b) {
      offsets_q.push_back(offsets_q.back() + nq[b]);
      offsets_k.push_back(offsets_k.back() + nk[b]);
    }
    q = random_matrix<float>(offsets_q.back(), kHeads * kDim, gen, -2, 2);
    k = random_matrix<float>(offsets_k.back(), kKvHeads * kDim, gen, -2, 2);
    v = random_matrix<float>(offsets_k.back(), kKvHeads * kDim, gen);
    out = Matrix<float>::Constant(offsets_q.back(), kHeads * kDim, 9.0f);
  }
  void run(const sdpa::Options& options) {
    const auto view = [](auto& m, Index heads) {
      using T = std::remove_reference_t<decltype(m(0, 0))>;
      return sdpa::TensorView<T>::bnhd(m.data(), 1, m.rows(), heads, kDim);
    };
    sdpa::attention_varlen<float>(view(q, kHeads), view(k, kKvHeads), view(v, kKvHeads), view(out, kHeads), offsets_q,
                                  offsets_k, options);
  }
  /// Sequence b, head h of a packed matrix: its rows, that head's columns.
  static Matrix<float> slice(const Matrix<float>& m, const std::vector<Index>& offsets, std::size_t b, Index h) {
    return m.block(offsets[b], h * kDim, offsets[b + 1] - offsets[b], kDim);
  }
};

}  // namespace

TEST_CASE("packed sequences match each sequence alone, on every path", "[varlen]") {
  auto gen = rng(1000);
  // Lengths 0 and 1, queries longer and shorter than keys, one long enough for several tiles.
  const std::vector<Index> nq = {0, 1, 7, 33, 5, 70, 1}, nk = {3, 1, 7, 20, 0, 70, 40};
  Packed p(nq, nk, gen);
  const std::vector<double> slopes = sdpa::alibi_slopes(kHeads), sinks = {0.3, -0.2, 1.0, 0.0};
  for (int variant = 0; variant < 4; ++variant)
    for (const sdpa::Kernel kernel : all_kernels()) {
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = variant != 0;
      if (variant >= 2) options.window = {6, variant == 3 ? 2 : 0};
      if (variant == 3) options.alibi_slopes = slopes, options.sinks = sinks, options.softcap = 3.0;
      p.out.setConstant(9.0f);
      p.run(options);
      for (std::size_t b = 0; b < nq.size(); ++b)
        for (Index h = 0; h < kHeads; ++h) {
          CAPTURE(variant, name(kernel), b, h);
          MaskSpec spec;
          spec.causal = options.causal;
          if (variant >= 2) spec.window_left = 6, spec.window_right = variant == 3 ? 2 : -1;
          if (variant == 3) {
            spec.alibi = true, spec.slope = slopes[std::size_t(h)];
            spec.has_sink = true, spec.sink = sinks[std::size_t(h)];
            spec.softcap = 3.0;
          }
          if (variant == 2) spec.window_right = 0;
          const Expected e = reference(Packed::slice(p.q, p.offsets_q, b, h), Packed::slice(p.k, p.offsets_k, b, h / 2),
                                       Packed::slice(p.v, p.offsets_k, b, h / 2), 1.0 / std::sqrt(double(kDim)), spec);
          check_attention(Packed::slice(p.out, p.offsets_q, b, h), e, nk[b], kDim, name(kernel));
        }
    }
}

TEST_CASE("packed sequences give the same bits for any thread count", "[varlen]") {
  auto gen = rng(1001);
  Packed p({130, 1, 64, 9}, {130, 200, 64, 9}, gen);
  sdpa::Options options;
  options.causal = true;
  options.threads = 1;
  p.run(options);
  const Matrix<float> one = p.out;
  options.threads = 2;
  p.run(options);
  CHECK((p.out.array() == one.array()).all());
  options.threads = 0;
  options.parallel_for = [](Index count, const std::function<void(Index, Index)>& body) {
    for (Index i = count; i-- > 0;) body(i, i + 1);  // one item at a time, backwards
  };
  p.run(options);
  CHECK((p.out.array() == one.array()).all());
}

TEST_CASE("bad offsets and padded-batch masks are rejected before anything is written", "[varlen][errors]") {
  auto gen = rng(1002);
  Packed p({3, 4}, {3, 4}, gen);
  const auto rejects = [&](std::vector<Index> offsets_q, std::vector<Index> offsets_k, const sdpa::Options& options,
                           std::initializer_list<const char*> fragments) {
    p.offsets_q = std::move(offsets_q);
    p.offsets_k = std::move(offsets_k);
    require_invalid([&] { p.run(options); }, fragments);
    CHECK((p.out.array() == 9.0f).all());
  };
  rejects({1, 3, 7}, {0, 3, 7}, {}, {"offsets_q must start at 0", "7 tokens"});
  rejects({0, 3, 6}, {0, 3, 7}, {}, {"offsets_q", "end at Q's 7 tokens"});
  rejects({0, 5, 3, 7}, {0, 1, 2, 7}, {}, {"offsets_q[2] is 3", "never decrease"});
  rejects({0, 3, 7}, {0, 7}, {}, {"offsets_q has 3 entries and offsets_k 2"});
  rejects({}, {0, 7}, {}, {"offsets_q must start at 0", "0 entries"});
  sdpa::Options padded;
  padded.sequence_lengths = {3, 4};
  rejects({0, 3, 7}, {0, 3, 7}, padded, {"sequence_lengths", "offsets"});
  sdpa::Options slopes;
  slopes.alibi_slopes = {0.5};
  rejects({0, 3, 7}, {0, 3, 7}, slopes, {"attention_varlen", "options.alibi_slopes has 1 entries", "4 query heads"});
}

}  // namespace test_varlen
