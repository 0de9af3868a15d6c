// Log-sum-exp outputs, merging partial results over disjoint key sets, the split-key decode
// path (one query against many keys), and weights reproduced from the LSE.
#include "catch.hpp"
#include "support.hpp"

namespace test_lse {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

template <class T>
using Vector = sdpa::Vector<T>;

/// |lse - expected| may be the score error (gamma(d_k + 4) x magnitude) plus the sum's
/// relative error (gamma(Nk + 4) and the exp's 8 eps), doubled.
template <class T>
void check_lse(const Vector<T>& lse, const Expected& e, Index nk, Index dk, const char* what) {
  for (Index i = 0; i < lse.size(); ++i) {
    CAPTURE(what, i);
    if (e.lse[i] == -std::numeric_limits<Wide>::infinity()) {
      CHECK(lse(i) == -std::numeric_limits<T>::infinity());
      continue;
    }
    const Wide eps = std::numeric_limits<T>::epsilon();
    const Wide tol = 2 * (gamma<T>(dk + 4) * e.score_magnitude[i] + gamma<T>(nk + 4) + 8 * eps +
                          eps * std::fabs(e.lse[i]));
    CHECK(std::fabs(Wide(lse(i)) - e.lse[i]) <= tol);
  }
}

template <class T>
MaskSpec some_masks(Index nq, Index nk, std::mt19937_64& gen, int kind);

/// Random Q (nq x d), K (nk x d), V (nk x dv) in precision T, and masks of the given kind.
template <class T>
struct Case {
  Matrix<T> Q, K, V;
  MaskSpec mask;
  Case(Index nq, Index nk, Index d, Index dv, std::mt19937_64& gen, int kind)
      : Q(random_matrix<T>(nq, d, gen, -2, 2)), K(random_matrix<T>(nk, d, gen, -2, 2)), V(random_matrix<T>(nk, dv, gen)),
        mask(some_masks<T>(nq, nk, gen, kind)) {}
};

template <class T>
MaskSpec some_masks(Index nq, Index nk, std::mt19937_64& gen, int kind) {
  MaskSpec mask;
  if (kind == 1) mask.causal = true;
  if (kind == 2) {
    mask.lengths.assign(std::size_t(nq), 0);
    for (Index i = 0; i < nq; ++i) mask.lengths[std::size_t(i)] = (nk * (i + 1)) / (nq + 1);
  }
  if (kind == 3) {
    std::bernoulli_distribution coin(0.7);
    mask.allowed = Matrix<bool>(1, nk);
    for (Index j = 0; j < nk; ++j) mask.allowed(0, j) = coin(gen);
    mask.bias = random_matrix<double>(1, nk, gen, -2, 2);
  }
  return mask;
}

}  // namespace

TEST_CASE("every path returns each row's log-sum-exp", "[lse]") {
  auto gen = rng(1);
  for (const int kind : {0, 1, 2, 3}) {
    const Case<float> c(23, 70, 16, 8, gen, kind);
    const Matrix<float>&Q = c.Q, &K = c.K, &V = c.V;
    const MaskSpec& mask = c.mask;
    const Expected e = reference(Q, K, V, 0.25, mask);
    for (const sdpa::Kernel kernel : all_kernels()) {
      Matrix<float> out(23, 8);
      Vector<float> lse(23);
      sdpa::attention_into(Q, K, V, out, lse, mask.options(kernel));
      check_attention(out, e, 70, 16, name(kernel));
      check_lse(lse, e, 70, 16, name(kernel));
    }
  }
}

TEST_CASE("decoding: one query against thousands of keys (split across threads) matches the reference", "[lse]") {
  auto gen = rng(2);
  // 1, 2, 5 and 16 pieces of keys (8192 keys, the 16, left out where the oracle is software)
  std::vector<Index> key_counts{1023, 1024, 3001};
  if (!kSoftwareWide) key_counts.push_back(8192);
  for (const Index nk : key_counts)
    for (const Index nq : {Index(1), Index(3)})
      for (const int kind : {0, 1, 2, 3}) {
        const Case<float> c(nq, nk, 64, 64, gen, kind);
        const Matrix<float>&Q = c.Q, &K = c.K, &V = c.V;
        const MaskSpec& mask = c.mask;
        const Expected e = reference(Q, K, V, 0.125, mask);
        for (const sdpa::Kernel kernel : {sdpa::Kernel::Blocked, sdpa::Kernel::Simd}) {
          CAPTURE(nk, nq, kind);
          Matrix<float> out(nq, 64);
          Vector<float> lse(nq);
          sdpa::Options options = mask.options(kernel);
          options.threads = 1;
          sdpa::attention_into(Q, K, V, out, lse, options);
          check_attention(out, e, nk, 64, name(kernel));
          check_lse(lse, e, nk, 64, name(kernel));
          if (nq == 1 && kind != 2) {  // the same query among 64 rows (many query tiles): not split
            const Matrix<float> many = Q.replicate(64, 1);
            sdpa::Options unsplit = options;
            unsplit.causal = false;  // one query sees every key either way; 64 causal rows would not
            if (kind == 3) unsplit.mask = mask.allowed, unsplit.bias = mask.bias;  // 1 x Nk: broadcasts
            const Matrix<float> rows = sdpa::attention(many, K, V, unsplit);
            Expected row0 = e;
            row0.out = rows.topRows(1).cast<Wide>();  // the unsplit kernel's answer, with the tolerance
            check_attention(out, row0, nk, 64, "split vs unsplit");
          }
          for (const int threads : {2, 3}) {  // the split depends on Nk, not on the threads
            options.threads = threads;
            Matrix<float> again(nq, 64);
            Vector<float> lse_again(nq);
            sdpa::attention_into(Q, K, V, again, lse_again, options);
            CHECK(again == out);
            CHECK(lse_again == lse);
          }
        }
      }
}

TEST_CASE("merging partials over any split of the keys gives attention over the union", "[lse]") {
  auto gen = rng(3);
  const Index nq = 9, nk = 97, d = 12;
  const Matrix<double> Q = random_matrix<double>(nq, d, gen, -2, 2), K = random_matrix<double>(nk, d, gen, -2, 2),
                       V = random_matrix<double>(nk, d, gen);
  for (const sdpa::Kernel kernel : all_kernels())
    for (const std::vector<Index>& cuts : {std::vector<Index>{50}, {1, 96}, {30, 31, 80}, {0, 97}}) {
      // shards [0, c0), [c0, c1), ..., [c_last, nk): attention_into each, merge in any order
      std::vector<Index> edges{0};
      edges.insert(edges.end(), cuts.begin(), cuts.end());
      edges.push_back(nk);
      Matrix<double> out = Matrix<double>::Zero(nq, d);
      Vector<double> lse = Vector<double>::Constant(nq, -std::numeric_limits<double>::infinity());
      sdpa::Options options;
      options.kernel = kernel;
      options.scale = 0.3;  // each shard must use the full call's scale, not 1/sqrt of anything else
      for (std::size_t s = edges.size() - 1; s-- > 0;) {
        const Index first = edges[s], count = edges[s + 1] - first;
        Matrix<double> part(nq, d);
        Vector<double> part_lse(nq);
        sdpa::attention_into(Q, K.middleRows(first, count), V.middleRows(first, count), part, part_lse, options);
        sdpa::merge_attention<double>(out, lse, part, part_lse);
      }
      MaskSpec none;
      const Expected e = reference(Q, K, V, 0.3, none);
      CAPTURE(name(kernel), cuts.size());
      check_attention(out, e, nk, d, name(kernel));
      check_lse(lse, e, nk, d, name(kernel));
    }
}

TEST_CASE("weights of any rows, reproduced from their LSE, equal attention_weights", "[lse]") {
  auto gen = rng(4);
  for (const int kind : {0, 1, 2, 3}) {
    const Case<double> c(17, 29, 8, 4, gen, kind);
    const Matrix<double>&Q = c.Q, &K = c.K, &V = c.V;
    const MaskSpec& mask = c.mask;
    const sdpa::Options options = mask.options(sdpa::Kernel::Simd);
    Matrix<double> out(17, 4);
    Vector<double> lse(17);
    sdpa::attention_into(Q, K, V, out, lse, options);
    const Matrix<double> all = sdpa::attention_weights(Q, K, options);
    const Matrix<double> some = sdpa::attention_weights_from_lse(Q, K, Vector<double>(lse.segment(5, 7)), 5, options);
    CAPTURE(kind);
    CHECK((some - all.middleRows(5, 7)).cwiseAbs().maxCoeff() <= 1e-13);
  }
}

}  // namespace test_lse
