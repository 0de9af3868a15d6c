// PagedKVCache: attention over pages read in place against the same tokens in a contiguous
// cache (bit for bit when decoding), for every storage type and path; the multi-head call
// (every head of a page at once) against the heads one by one, bit for bit, and against the
// long-double reference; forks that share a prompt with copy on write; freeing and truncating
// pages; SelfAttention::step; bad input.
#include "catch.hpp"
#include "support.hpp"

#include <cstring>
#include <limits>

namespace test_paged {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

constexpr Index kHeads = 2, kDim = 32, kPage = 16;

/// The same tokens in a paged cache, between the tokens of another sequence (so that the
/// pages of `sequence` are scattered), and in a contiguous cache.
template <class S>
struct Caches {
  sdpa::PagedKVCache<S> paged{kHeads, kDim, kDim, kPage, 200};
  sdpa::KVCache<S> flat{1, kHeads, kDim, kDim, 2000};
  Index sequence = -1;

  Caches(Index tokens, std::mt19937_64& gen) {
    const Index other = paged.add_sequence();
    sequence = paged.add_sequence();
    const Matrix<float> k = random_matrix<float>(tokens, kHeads * kDim, gen, -2, 2),
                        v = random_matrix<float>(tokens, kHeads * kDim, gen);
    for (Index t = 0; t < tokens; t += 23) {
      const Index n = std::min<Index>(23, tokens - t);
      paged.append(sequence, k.middleRows(t, n), v.middleRows(t, n));
      paged.append(other, k.middleRows(t, 1), v.middleRows(t, 1));
      flat.append(0, k.middleRows(t, n), v.middleRows(t, n));
    }
  }
  /// Attention of q against head h of the contiguous cache, through the batched API (one
  /// sequence, one head: the same kernels as the 2-D call; int8 blocks have no Eigen matrix).
  Matrix<float> flat_attention(const Matrix<float>& q, Index h, const sdpa::Options& options) const {
    const auto tensor = [](sdpa::MatrixView<const S> m) {
      return sdpa::TensorView<const S>{m.data, 1, 1, m.rows, m.cols, 0, 0, m.row_stride};
    };
    Matrix<float> out(q.rows(), kDim);
    sdpa::attention(sdpa::TensorView<const float>::bhnd(q.data(), 1, 1, q.rows(), kDim), tensor(flat.keys(0, h)),
                    tensor(flat.values(0, h)), sdpa::TensorView<float>::bhnd(out.data(), 1, 1, q.rows(), kDim), options);
    return out;
  }
};

template <class S>
void check_paged_matches_contiguous(const std::string& type) {
  auto gen = rng(1100);
  Caches<S> caches(1300, gen);  // long enough to split the keys when decoding
  for (const Index nq : {1, 3, 20})
    for (const sdpa::Kernel kernel : all_kernels()) {
      if (sdpa::is_quantized<S> && (kernel == sdpa::Kernel::Reference || kernel == sdpa::Kernel::Blocked)) continue;
      CAPTURE(type, nq, name(kernel));
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = true;
      options.window = {500, 0};
      options.sinks = {0.25};
      const Matrix<float> q = random_matrix<float>(nq, kDim, gen, -2, 2);
      for (Index h = 0; h < kHeads; ++h) {
        const Matrix<float> paged = sdpa::attention(q, caches.paged.keys(caches.sequence, h),
                                                    caches.paged.values(caches.sequence, h), options);
        const Matrix<float> flat = caches.flat_attention(q, h, options);
        if (nq <= 4) {
          CHECK((paged.array() == flat.array()).all());  // the same sums in the same order
        } else {
          CHECK((paged - flat).cwiseAbs().maxCoeff() <= 1e-5f);  // prefill: packed differently
        }
      }
    }
}

}  // namespace

TEST_CASE("attention over pages equals attention over the contiguous cache", "[paged]") {
  check_paged_matches_contiguous<float>("float");
  check_paged_matches_contiguous<Eigen::half>("half");
  check_paged_matches_contiguous<Eigen::bfloat16>("bfloat16");
  check_paged_matches_contiguous<sdpa::BlockQ8_0>("q8_0");
}

TEST_CASE("attention over pages matches the long-double reference (double, every path)", "[paged]") {
  auto gen = rng(1101);
  sdpa::PagedKVCache<double> cache(1, 8, 8, 4, 16);
  const Index s = cache.add_sequence();
  const Matrix<double> k = random_matrix<double>(29, 8, gen, -2, 2), v = random_matrix<double>(29, 8, gen);
  cache.append(s, k, v);
  const Matrix<double> q = random_matrix<double>(5, 8, gen, -2, 2);
  MaskSpec spec;
  spec.causal = true;
  spec.alibi = true;
  spec.slope = 0.3;
  const Expected e = reference(q, k, v, 1.0 / std::sqrt(8.0), spec);
  for (const sdpa::Kernel kernel : all_kernels()) {
    CAPTURE(name(kernel));
    check_attention(sdpa::attention(q, cache.keys(s, 0), cache.values(s, 0), spec.options(kernel)), e, 29, 8,
                    name(kernel));
  }
}

namespace {

/// Whether two matrices hold the same bits (NaN included).
bool same_bits(const Matrix<float>& a, const Matrix<float>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), sizeof(float) * std::size_t(a.size())) == 0;
}

/// `tokens` tokens of `kv_heads` heads in pages of `page` tokens, their pages scattered among
/// another sequence's; `keys` and `values` keep them as floats (n x kv_heads d).
template <class S>
struct MultiHeadCache {
  sdpa::PagedKVCache<S> paged;
  Matrix<float> keys, values;
  Index sequence = -1;

  MultiHeadCache(Index kv_heads, Index page, Index tokens, std::mt19937_64& gen)
      : paged(kv_heads, kDim, kDim, page, 2 * (tokens / page + 2)),
        keys(random_matrix<float>(tokens, kv_heads * kDim, gen, -2, 2)),
        values(random_matrix<float>(tokens, kv_heads * kDim, gen)) {
    const Index other = paged.add_sequence();
    sequence = paged.add_sequence();
    for (Index t = 0; t < tokens; t += page) {  // a page of each in turn
      const Index n = std::min(page, tokens - t);
      paged.append(sequence, keys.middleRows(t, n), values.middleRows(t, n));
      paged.append(other, keys.middleRows(t, n), values.middleRows(t, n));
    }
  }
};

/// Options of the multi-head call, with per-head sinks and slopes, and those of head h alone.
sdpa::Options multi_head_options(Index heads, sdpa::Kernel kernel, int threads) {
  sdpa::Options o;
  o.kernel = kernel;
  o.threads = threads;
  o.causal = true;
  o.window = {700, 0};
  o.softcap = 8.0;
  for (Index h = 0; h < heads; ++h) o.sinks.push_back(0.3 * double(h) - 0.5), o.alibi_slopes.push_back(0.01 * double(h + 1));
  return o;
}
sdpa::Options head_options(const sdpa::Options& all, Index h) {
  sdpa::Options o = all;
  o.sinks = {all.sinks[std::size_t(h)]};
  o.alibi_slopes = {all.alibi_slopes[std::size_t(h)]};
  return o;
}

template <class S>
void check_multi_head_matches_heads(const std::string& type) {
  auto gen = rng(1105);
  constexpr Index kKvHeads = 2, kQueryHeads = 4;  // grouped: two query heads per kv head
  for (const Index page : {16, 5, 37})
    for (const Index tokens : {0, 1, 300, 1300}) {  // 1300: the keys are split into pieces
      MultiHeadCache<S> cache(kKvHeads, page, tokens, gen);
      for (const Index nq : {1, 4, 9})
        for (const sdpa::Kernel kernel : all_kernels())
          for (const int threads : {1, 2}) {
            if (sdpa::is_quantized<S> && (kernel == sdpa::Kernel::Reference || kernel == sdpa::Kernel::Blocked)) continue;
            CAPTURE(type, page, tokens, nq, name(kernel), threads);
            const sdpa::Options options = multi_head_options(kQueryHeads, kernel, threads);
            const Matrix<float> q = random_matrix<float>(nq, kQueryHeads * kDim, gen, -2, 2);
            const Matrix<float> all = sdpa::attention(q, cache.paged, cache.sequence, options);
            REQUIRE(all.rows() == nq);
            REQUIRE(all.cols() == kQueryHeads * kDim);
            for (Index h = 0; h < kQueryHeads; ++h) {
              const Index kv = h / (kQueryHeads / kKvHeads);
              const Matrix<float> one = sdpa::attention(q.middleCols(h * kDim, kDim), cache.paged.keys(cache.sequence, kv),
                                                        cache.paged.values(cache.sequence, kv), head_options(options, h));
              CHECK(same_bits(all.middleCols(h * kDim, kDim), one));
            }
          }
    }
}

}  // namespace

TEST_CASE("multi-head attention over pages equals the heads one by one, bit for bit", "[paged]") {
  check_multi_head_matches_heads<float>("float");
  check_multi_head_matches_heads<Eigen::half>("half");
  check_multi_head_matches_heads<Eigen::bfloat16>("bfloat16");
  check_multi_head_matches_heads<sdpa::BlockQ8_0>("q8_0");
}

TEST_CASE("multi-head decoding from pages matches the long-double reference; NaN stays in its head", "[paged]") {
  auto gen = rng(1106);
  constexpr Index kKvHeads = 2, kQueryHeads = 4;
  MultiHeadCache<float> cache(kKvHeads, 16, 1500, gen);
  const sdpa::Options options = multi_head_options(kQueryHeads, sdpa::Kernel::Simd, 2);
  const Matrix<float> q = random_matrix<float>(2, kQueryHeads * kDim, gen, -2, 2);
  Matrix<float> out = Matrix<float>::Constant(2, kQueryHeads * kDim, -7.0f);
  sdpa::attention_into(q, cache.paged, cache.sequence, out, options);
  for (Index h = 0; h < kQueryHeads; ++h) {
    const Index kv = h / 2;
    MaskSpec spec;
    spec.causal = true;
    spec.window_left = 700, spec.window_right = 0;
    spec.softcap = 8.0;
    spec.alibi = true, spec.slope = options.alibi_slopes[std::size_t(h)];
    spec.has_sink = true, spec.sink = options.sinks[std::size_t(h)];
    const Matrix<float> q_h = q.middleCols(h * kDim, kDim), k_h = cache.keys.middleCols(kv * kDim, kDim),
                        v_h = cache.values.middleCols(kv * kDim, kDim);
    const Expected e = reference(q_h, k_h, v_h, 1.0 / std::sqrt(double(kDim)), spec);
    CAPTURE(h);
    check_attention(Matrix<float>(out.middleCols(h * kDim, kDim)), e, 1500, kDim, "multi-head paged decode");
  }

  // A NaN value the last query sees reaches the rows of its kv head's query heads (redone by
  // the reference, as head by head), and no other head's.
  Matrix<float> k_new = random_matrix<float>(1, kKvHeads * kDim, gen), v_new = random_matrix<float>(1, kKvHeads * kDim, gen);
  v_new(0, kDim + 3) = std::numeric_limits<float>::quiet_NaN();  // kv head 1
  cache.paged.append(cache.sequence, k_new, v_new);
  const Matrix<float> last = q.topRows(1), nan_out = sdpa::attention(last, cache.paged, cache.sequence, options);
  CHECK(nan_out.leftCols(2 * kDim).allFinite());
  for (Index h = 2; h < kQueryHeads; ++h) {
    CHECK(std::isnan(nan_out(0, h * kDim + 3)));
    CHECK(same_bits(nan_out.middleCols(h * kDim, kDim),
                    sdpa::attention(last.middleCols(h * kDim, kDim), cache.paged.keys(cache.sequence, 1),
                                    cache.paged.values(cache.sequence, 1), head_options(options, h))));
  }
}

TEST_CASE("the multi-head call rejects bad shapes, sequences and per-head lists before writing", "[paged][errors]") {
  auto gen = rng(1107);
  MultiHeadCache<float> cache(2, 16, 40, gen);
  const Matrix<float> q = random_matrix<float>(1, 4 * kDim, gen);
  Matrix<float> out = Matrix<float>::Constant(1, 4 * kDim, -7.0f);
  const sdpa::Options options = multi_head_options(4, sdpa::Kernel::Auto, 1);
  require_invalid([&] { (void)sdpa::attention(Matrix<float>(q.leftCols(3 * kDim)), cache.paged, cache.sequence); },
                  {"Q is 1x96", "2 key heads of d_k = 32", "a multiple of 64 columns"});
  require_invalid([&] { (void)sdpa::attention(q, cache.paged, 5); }, {"sequence 5 does not exist"});
  sdpa::Options two_sinks = options;
  two_sinks.sinks = {0.0, 1.0};
  require_invalid([&] { sdpa::attention_into(q, cache.paged, cache.sequence, out, two_sinks); }, {"sinks"});
  Matrix<float> narrow(1, 3 * kDim);
  require_invalid([&] { sdpa::attention_into(q, cache.paged, cache.sequence, narrow, options); },
                  {"out is 1x96", "1x128"});
  CHECK((out.array() == -7.0f).all());
}

TEST_CASE("fork shares a prompt's pages; the first append copies a shared last page", "[paged]") {
  auto gen = rng(1102);
  sdpa::PagedKVCache<float> cache(1, 4, 4, 4, 8);
  const Index a = cache.add_sequence();
  const Matrix<float> prompt = random_matrix<float>(6, 4, gen);  // a full page and half of one
  cache.append(a, prompt, prompt);
  const Index b = cache.fork(a);
  CHECK(cache.page_table(b) == cache.page_table(a));
  CHECK(cache.references(cache.page_table(a)[0]) == 2);
  CHECK(cache.free_pages() == 6);
  CHECK(cache.room(a) == 6 * 4 - 2);  // the copy of the shared half page takes a free page

  const Matrix<float> ta = random_matrix<float>(1, 4, gen), tb = random_matrix<float>(3, 4, gen);
  cache.append(a, ta, ta);
  cache.append(b, tb, tb);
  CHECK(cache.page_table(a)[0] == cache.page_table(b)[0]);  // the full page stays shared
  CHECK(cache.page_table(a)[1] != cache.page_table(b)[1]);  // the half page was copied
  CHECK(cache.references(cache.page_table(a)[1]) == 1);
  CHECK(cache.references(cache.page_table(b)[1]) == 1);
  const auto row = [&](Index s, Index t) {
    const float* r = cache.keys(s, 0).row(t);
    return Matrix<float>(Eigen::Map<const Matrix<float>>(r, 1, 4));
  };
  for (Index t = 0; t < 6; ++t) CHECK(row(a, t) == prompt.row(t));
  for (Index t = 0; t < 6; ++t) CHECK(row(b, t) == prompt.row(t));
  CHECK(row(a, 6) == ta);
  for (Index t = 0; t < 3; ++t) CHECK(row(b, 6 + t) == tb.row(t));

  const Index shared = cache.page_table(a)[0];
  cache.free(a);
  CHECK(cache.references(shared) == 1);
  CHECK(cache.free_pages() == 8 - 3);  // b: pages 0, its copy, and one more for its 9th token
  cache.truncate(b, 4);
  CHECK(cache.free_pages() == 8 - 1);
  cache.free(b);
  CHECK(cache.free_pages() == 8);
  CHECK(cache.add_sequence() == a);  // ids are reused
}

TEST_CASE("SelfAttention::step on a paged cache: forks of a prompt decode as separate caches", "[paged][layer]") {
  const auto layer = sdpa::SelfAttention<float>::random(32, 4, 3, true, true, 2);
  auto gen = rng(1103);
  const Matrix<float> prompt = random_matrix<float>(21, 32, gen), xa = random_matrix<float>(5, 32, gen),
                      xb = random_matrix<float>(5, 32, gen);
  sdpa::Options options;
  options.window = {9, 0};
  options.sinks = {0.5, 0.0, -0.5, 1.0};
  sdpa::PagedKVCache<float> paged(2, 8, 8, 8, 32);
  sdpa::KVCache<float> flat(2, 2, 8, 8, 64);
  const Index a = paged.add_sequence();
  const Matrix<float> ya = layer.step(prompt, paged, a, options);
  CHECK((ya.array() == layer.step(prompt, flat, 0, options).array()).all());
  (void)layer.step(prompt, flat, 1, options);
  const Index b = paged.fork(a);
  for (Index t = 0; t < 5; ++t) {
    CHECK((layer.step(xa.row(t), paged, a, options).array() == layer.step(xa.row(t), flat, 0, options).array()).all());
    CHECK((layer.step(xb.row(t), paged, b, options).array() == layer.step(xb.row(t), flat, 1, options).array()).all());
  }
}

TEST_CASE("bad page tables, sequences and appends are rejected, changing nothing", "[paged][errors]") {
  auto gen = rng(1104);
  sdpa::PagedKVCache<float> cache(1, 4, 4, 4, 3);
  require_invalid([&] { (void)cache.adopt({0, 3}, 8); }, {"page table entry 1 is page 3", "[0, 3)"});
  require_invalid([&] { (void)cache.adopt({0, -1}, 8); }, {"page -1"});
  require_invalid([&] { (void)cache.adopt({0}, 8); }, {"1 pages cannot hold exactly 8 tokens", "needs 2"});
  CHECK(cache.free_pages() == 3);
  const Index s = cache.adopt({2, 0}, 7);  // a user's own block table
  CHECK(cache.free_pages() == 1);
  CHECK(cache.length(s) == 7);
  const Matrix<float> six = random_matrix<float>(6, 4, gen);
  require_invalid([&] { cache.append(s, six, six); }, {"sequence 0 holds 7 tokens; 6 more", "1 free pages"});
  CHECK(cache.length(s) == 7);
  CHECK(cache.free_pages() == 1);
  require_invalid([&] { cache.append(s, six, six.leftCols(3)); }, {"expected n x 4"});
  require_invalid([&] { (void)cache.length(5); }, {"sequence 5 does not exist"});
  require_invalid([&] { (void)cache.keys(s, 1); }, {"head 1 is outside [0, 1)"});
  require_invalid([&] { cache.truncate(s, 9); }, {"cannot truncate it to 9"});
  require_invalid([&] { sdpa::PagedKVCache<float>(1, 4, 4, 0, 3); }, {"page_size 0"});
  const auto layer = sdpa::SelfAttention<float>::random(4, 1, 1);
  require_invalid([&] { (void)layer.step(six, cache, s); }, {"SelfAttention::step", "6 more exceed"});
  CHECK(cache.length(s) == 7);
}

}  // namespace test_paged
