// paged_decoding.cpp - two sequences that share a prompt, decoded through one paged KV cache,
// with the attention of gpt-oss: a sliding window and a sink per head.
//
// A serving engine holds the keys and values of many sequences in one pool of fixed-size
// pages (vLLM's PagedAttention). A prompt is prefilled once; every continuation of it (here
// two, as in parallel sampling or beam search) forks the prompt's sequence, sharing its pages:
// only the partly filled last page is copied, when a continuation first writes to it. Memory
// grows with what the sequences do not share.
//
// The layer attends with a sliding window (each token sees itself and the 15 before it) and a
// sink logit per head (a learned "attend to nothing" option, so a head can put weight nowhere).
// Each decoded token is checked against a from-scratch causal forward over its whole
// sequence; the exit code is 1 if any differs, so running this under CTest is a test.
#include <sdpa/sdpa.hpp>

#include <cmath>
#include <cstdio>
#include <random>

namespace {

using sdpa::Index;
using Matrix = sdpa::Matrix<float>;

Matrix random_tokens(Index n, Index d_model, std::mt19937& gen) {
  std::normal_distribution<float> dist(0.0f, 1.0f);
  Matrix x(n, d_model);
  for (Index i = 0; i < x.size(); ++i) x.data()[i] = dist(gen);
  return x;
}

}  // namespace

int main() {
  const Index d_model = 64, heads = 4, kv_heads = 2, head_dim = d_model / heads;
  const Index page_size = 8, prompt_tokens = 20, new_tokens = 12;
  const auto layer = sdpa::SelfAttention<float>::random(d_model, heads, /*seed=*/5, true, true, kv_heads);

  sdpa::Options options;
  options.window = {15, 0};                      // itself and the 15 tokens before it
  options.sinks = {0.0, 0.5, 1.0, -1.0};         // one sink logit per query head

  sdpa::PagedKVCache<float> cache(kv_heads, head_dim, head_dim, page_size, /*pages=*/16);
  std::mt19937 gen(11);
  const Matrix prompt = random_tokens(prompt_tokens, d_model, gen);

  const Index a = cache.add_sequence();
  (void)layer.step(prompt, cache, a, options);  // prefill once
  const Index b = cache.fork(a);                 // b shares a's 3 pages (the third half full)
  std::printf("prompt of %ld tokens in %zu pages of %ld; after the fork %ld of %ld pages are free\n",
              long(prompt_tokens), cache.page_table(a).size(), long(page_size), long(cache.free_pages()),
              long(cache.pages()));

  Matrix seq_a = prompt, seq_b = prompt;  // each sequence's inputs so far, for the recompute
  sdpa::Options causal = options;
  causal.causal = true;
  float worst = 0.0f;
  for (Index t = 0; t < new_tokens; ++t) {
    for (auto [id, seq] : {std::pair{a, &seq_a}, std::pair{b, &seq_b}}) {
      const Matrix x = random_tokens(1, d_model, gen);
      const Matrix y = layer.step(x, cache, id, options);  // one token through the paged cache
      seq->conservativeResize(seq->rows() + 1, Eigen::NoChange);
      seq->bottomRows(1) = x;
      const Matrix recomputed = layer.forward(*seq, causal).bottomRows(1);
      worst = std::max(worst, (y - recomputed).cwiseAbs().maxCoeff());
    }
  }
  Index shared = 0;
  for (std::size_t i = 0; i < cache.page_table(a).size(); ++i)
    shared += cache.page_table(a)[i] == cache.page_table(b)[i];
  std::printf("after %ld tokens each: a and b hold %zu pages each, %ld of them shared; %ld pages free\n",
              long(new_tokens), cache.page_table(a).size(), long(shared), long(cache.free_pages()));
  std::printf("largest difference from a causal recompute of each whole sequence: %.3g\n", double(worst));

  cache.free(a);
  cache.free(b);
  std::printf("after freeing both: %ld of %ld pages free\n", long(cache.free_pages()), long(cache.pages()));
  const bool ok = worst <= 1e-4f && cache.free_pages() == cache.pages() && shared == 2;
  std::printf("%s\n", ok ? "ok" : "MISMATCH");
  return ok ? 0 : 1;
}
