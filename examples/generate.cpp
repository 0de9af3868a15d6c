// generate.cpp - a tiny decoder-only model generating text one token at a time through a KV cache.
//
// The model, with seeded random weights:
//
//     x_t    = E[token_t] + PE(t)                 embedding row + sinusoidal position encoding
//     x      = x + attention_l(x)   for l = 1, 2  causal self-attention with a residual connection
//     logits = x E^T                               output projection tied to the embedding table
//     next   = argmax(logits)                      greedy decoding
//
// Each attention layer has 8 query heads sharing 2 key/value heads (grouped-query attention: the
// cache holds 4x fewer keys and values). A real transformer also has an MLP and a normalisation
// after each attention; they act on each position on its own, so they change nothing about how
// the cache works, and are left out.
//
// Do not expect prose: the model is untrained, and greedy decoding of a random model soon falls
// into repeating one word (once the context is mostly that word, attention averages it back into
// the same prediction). Trained models learn not to; samplers add randomness. The point here is
// the mechanics of generation, not the words.
//
// Generating without a cache would recompute every earlier token's keys and values at every
// step: O(n^2) projections for n tokens. With one, the prompt goes through each layer in one
// `step` (prefill), then each new token costs one single-row `step` per layer, which appends
// its keys and values to that layer's KVCache and attends to everything cached so far.
//
//     usage: generate [--tokens N]        (default: 64 new tokens)
//
// Every few tokens the cached path is checked against a from-scratch causal `forward` over the
// whole sequence; the exit code is 1 if any check fails, so running this under CTest is a test.
#include <sdpa/sdpa.hpp>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace {

using Mat = sdpa::Matrix<float>;
using Row = Eigen::RowVectorXf;
using sdpa::Index;

constexpr Index kVocab = 64, kModel = 64, kHeads = 8, kKvHeads = 2, kLayers = 2;
constexpr Index kCheckEvery = 8;  // compare the cache against a recomputation every 8 tokens

// 64 made-up words: two of eight syllables each, so token 10 (= 1 * 8 + 2) is "lomi".
std::string word(Index token) {
  static const char* syllables[] = {"ka", "lo", "mi", "nu", "pe", "ra", "si", "to"};
  return std::string(syllables[token / 8]) + syllables[token % 8];
}

// The embedding table, uniform in [-a, a] from a seeded generator (the same bits on every
// platform, as in SelfAttention::random); a = sqrt(3 / d) gives rows of norm ~1.
Mat embedding_table(std::uint64_t seed) {
  std::mt19937_64 engine(seed);
  const double a = std::sqrt(3.0 / double(kModel));
  Mat E(kVocab, kModel);
  for (Index i = 0; i < E.size(); ++i) E.data()[i] = float((double(engine() >> 11) * 0x1.0p-53 * 2.0 - 1.0) * a);
  return E;
}

// "Attention Is All You Need", section 3.5: PE(t, 2i) = sin(t / 10000^(2i/d)), PE(t, 2i+1) = cos(...).
Mat position_encoding(Index positions) {
  Mat PE(positions, kModel);
  for (Index t = 0; t < positions; ++t)
    for (Index i = 0; i < kModel; i += 2) {
      const double angle = double(t) / std::pow(10000.0, double(i) / double(kModel));
      PE(t, i) = float(std::sin(angle));
      PE(t, i + 1) = float(std::cos(angle));
    }
  return PE;
}

struct Model {
  Mat E, PE;
  std::vector<sdpa::SelfAttention<float>> layers;

  // Rows E[token] + PE(position) for tokens [first, end) of the sequence.
  Mat embed(const std::vector<Index>& tokens, Index first) const {
    Mat x(Index(tokens.size()) - first, kModel);
    for (Index t = first; t < Index(tokens.size()); ++t) x.row(t - first) = E.row(tokens[t]) + PE.row(t);
    return x;
  }
  Row logits(const Row& hidden) const { return hidden * E.transpose(); }
};

Index argmax(const Row& v) {
  Index best = 0;
  v.maxCoeff(&best);
  return best;
}

// The from-scratch path: the whole sequence through both layers with a causal mask, no cache.
// Returns the last position's hidden state, which the cached path must reproduce.
Row recompute(const Model& model, const std::vector<Index>& tokens) {
  sdpa::Options options;
  options.causal = true;  // position t sees 0..t, exactly what the cache held when t was generated
  Mat x = model.embed(tokens, 0);
  for (const auto& layer : model.layers) x += layer.forward(x, options);
  return x.row(x.rows() - 1);
}

// Compares the cached hidden state of the newest token with the recomputation. Tolerance: the
// two paths round differently (a 1-row step vs an N-row forward: different GEMM blocking and,
// while Nk <= 128, a different kernel: Reference for 1 x Nk, Simd for N x N), each value being
// a few 64-term dot products and a softmax-weighted sum per layer, two layers deep.
// Summation error bounds grow like (terms x eps), so allow 256 float eps relative to the
// hidden state's magnitude (3e-5 x max|h|; observed: ~1e-6); a real cache bug (a wrong
// position, stale or missing keys) changes the hidden state by O(0.1-1).
bool check(const Model& model, const std::vector<Index>& tokens, const Row& cached) {
  const Row fresh = recompute(model, tokens);
  const double magnitude = std::max(1.0, double(fresh.cwiseAbs().maxCoeff()));
  const double tolerance = 256 * double(std::numeric_limits<float>::epsilon()) * magnitude;
  const double difference = (cached - fresh).cwiseAbs().maxCoeff();  // NaN compares false below
  // The next token must agree too - unless the two best logits are closer than the paths differ
  // (a genuine near-tie, which rounding may break either way).
  const Row a = model.logits(cached), b = model.logits(fresh);
  Row second = b;
  second(argmax(b)) = -std::numeric_limits<float>::infinity();
  const double gap = b.maxCoeff() - second.maxCoeff(), logit_difference = (a - b).cwiseAbs().maxCoeff();
  const bool same_next = argmax(a) == argmax(b) || gap <= 2 * logit_difference;
  const bool ok = difference <= tolerance && same_next;
  std::printf("  check at length %3ld: max |cached - recomputed| = %.1e (tolerance %.1e), next %s / %s  %s\n",
              long(tokens.size()), difference, tolerance, word(argmax(a)).c_str(), word(argmax(b)).c_str(),
              ok ? "ok" : "FAILED");
  return ok;
}

// Tokens [first, end) as words, 12 to a line.
void print_words(const char* title, const std::vector<Index>& tokens, Index first, Index end) {
  std::printf("%s", title);
  for (Index t = first; t < end; ++t) {
    const bool new_line = t > first && (t - first) % 12 == 0;
    std::printf("%s%s", new_line ? "\n          " : " ", word(tokens[t]).c_str());
  }
  std::printf("\n");
}

int run(Index new_tokens) {
  // The prompt: the digits of pi, two at a time (any tokens would do).
  std::vector<Index> tokens = {31, 41, 59, 26, 53, 58, 9, 32};
  const Index prompt = Index(tokens.size()), total = prompt + new_tokens;

  Model model{embedding_table(2024), position_encoding(total), {}};
  for (Index l = 0; l < kLayers; ++l)  // no biases (they start at 0 anyway), with output projection Wo
    model.layers.push_back(sdpa::SelfAttention<float>::random(kModel, kHeads, /*seed=*/100 + l, false, true, kKvHeads));
  // One cache per layer (each layer has its own keys and values), sized once for the whole run:
  // memory is allocated here and never again while generating.
  std::vector<sdpa::KVCache<float>> caches;
  for (const auto& layer : model.layers)
    caches.emplace_back(/*batch=*/1, layer.kv_heads(), layer.head_dim(), layer.value_head_dim(), /*capacity=*/total);

  std::printf("A %ld-layer decoder (d_model %ld, %ld query heads, %ld kv heads), vocabulary of %ld, random weights\n",
              long(kLayers), long(kModel), long(kHeads), long(kKvHeads), long(kVocab));
  print_words("prompt:", tokens, 0, prompt);

  // Prefill: all prompt tokens through each layer in one step (causal within the prompt).
  Mat x = model.embed(tokens, 0);
  for (Index l = 0; l < kLayers; ++l) x += model.layers[l].step(x, caches[l]);
  Row hidden = x.row(prompt - 1);  // only the last position predicts the next token
  bool ok = check(model, tokens, hidden);

  // Generation: pick the next token, then run it alone through each layer. Its step appends its
  // keys and values, so afterwards the caches hold the whole sequence and `hidden` predicts the
  // token after it. Only this loop is timed, not the checks.
  std::chrono::steady_clock::duration elapsed{};
  for (Index n = 1; n <= new_tokens; ++n) {
    const auto start = std::chrono::steady_clock::now();
    tokens.push_back(argmax(model.logits(hidden)));
    Mat x_new = model.embed(tokens, Index(tokens.size()) - 1);  // 1 x d_model
    for (Index l = 0; l < kLayers; ++l) x_new += model.layers[l].step(x_new, caches[l]);
    hidden = x_new.row(0);
    elapsed += std::chrono::steady_clock::now() - start;
    if (n % kCheckEvery == 0 || n == new_tokens) ok = check(model, tokens, hidden) && ok;
  }
  for (const auto& cache : caches) ok = ok && cache.length(0) == total;  // every token cached exactly once

  print_words("generated:", tokens, prompt, total);
  const double seconds = std::chrono::duration<double>(elapsed).count();
  std::printf("%ld tokens in %.2f ms: %.0f tokens/s (one run on this machine, not a benchmark)\n",
              long(new_tokens), seconds * 1e3, double(new_tokens) / seconds);

  std::printf(ok ? "\nAll checks passed.\n" : "\nSome checks FAILED\n");
  return ok ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  Index new_tokens = 64;
  if (argc == 3 && std::string(argv[1]) == "--tokens") {
    new_tokens = std::atol(argv[2]);
  } else if (argc != 1) {
    new_tokens = 0;
  }
  if (new_tokens < 1) {
    std::printf("usage: %s [--tokens N]   (N >= 1 new tokens, default 64)\n", argv[0]);
    return 2;
  }
  try {
    return run(new_tokens);
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
