// train.cpp - training an attention layer with sdpa's backward pass: attention as the soft
// dictionary lookup it is.
//
// The task: a dictionary of 8 (key, value) pairs, keys distinct, drawn from 16 key symbols
// and 16 value symbols, and a query key that is one of the 8. The answer is the value stored
// under it. Each pair is one memory token, one-hot key and one-hot value side by side (32
// features); the query is a token with the one-hot key only. One cross-attention layer (2
// heads) reads the memory; its output projection gives 16 logits, one per value symbol.
//
// Nothing but attention can solve it: the answer's position changes with every dictionary.
// The layer must learn queries that match keys (Wq, Wk), values that carry the value symbol
// (Wv) and a read-out (Wo). sdpa computes the forward and, through SelfAttention::backward,
// every gradient; the optimiser (Adam) and the loss (softmax cross-entropy) are written here.
//
//   train [--steps N] [--seed S]     prints the loss falling; exits 1 below 95% accuracy
#include <sdpa/sdpa.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

namespace {

using Matrix = sdpa::Matrix<float>;
using RowVector = sdpa::RowVector<float>;

constexpr int kKeys = 16, kValues = 16, kPairs = 8, kWidth = kKeys + kValues;
constexpr int kHeads = 2, kBatch = 32;

/// One dictionary and one question about it.
struct Example {
  Matrix memory;  // kPairs x kWidth: one-hot key | one-hot value
  Matrix query;   // 1 x kWidth: one-hot key | zeros
  int answer;     // the value stored under the query's key
};

Example draw(std::mt19937& rng) {
  std::vector<int> keys(kKeys);
  std::iota(keys.begin(), keys.end(), 0);
  std::shuffle(keys.begin(), keys.end(), rng);  // the first kPairs are this dictionary's keys
  std::uniform_int_distribution<int> value(0, kValues - 1), which(0, kPairs - 1);
  Example e{Matrix::Zero(kPairs, kWidth), Matrix::Zero(1, kWidth), 0};
  std::vector<int> values(kPairs);
  for (int p = 0; p < kPairs; ++p) {
    values[p] = value(rng);
    e.memory(p, keys[p]) = 1;
    e.memory(p, kKeys + values[p]) = 1;
  }
  const int asked = which(rng);
  e.query(0, keys[asked]) = 1;
  e.answer = values[asked];
  return e;
}

/// Softmax cross-entropy of one row of logits: the loss, and its gradient in `d_logits`.
float cross_entropy(const Matrix& logits, int answer, Matrix& d_logits) {
  const float max = logits.maxCoeff();
  d_logits = (logits.array() - max).exp().matrix();
  const float sum = d_logits.sum();
  d_logits /= sum;
  const float loss = -std::log(d_logits(0, answer));
  d_logits(0, answer) -= 1;
  return loss;
}

/// Adam (Kingma and Ba) on one parameter, with its own moment estimates.
struct Adam {
  float rate = 0.01f, beta1 = 0.9f, beta2 = 0.999f, epsilon = 1e-8f;
  template <class P>
  void step(P& parameter, const P& gradient, P& m, P& v, int t) const {
    if (parameter.size() == 0) return;
    m = beta1 * m + (1 - beta1) * gradient;
    v = beta2 * v + (1 - beta2) * gradient.cwiseProduct(gradient);
    const float m_hat = 1 / (1 - std::pow(beta1, float(t))), v_hat = 1 / (1 - std::pow(beta2, float(t)));
    parameter.array() -= rate * (m.array() * m_hat) / ((v.array() * v_hat).sqrt() + epsilon);
  }
};

/// Every parameter of the layer, listed once for the optimiser: f(parameter, gradient, m, v).
template <class F>
void for_each_parameter(sdpa::AttentionWeights<float>& w, sdpa::AttentionWeights<float>& g,
                        sdpa::AttentionWeights<float>& m, sdpa::AttentionWeights<float>& v, F&& f) {
  f(w.Wq, g.Wq, m.Wq, v.Wq), f(w.Wk, g.Wk, m.Wk, v.Wk), f(w.Wv, g.Wv, m.Wv, v.Wv), f(w.Wo, g.Wo, m.Wo, v.Wo);
  f(w.bq, g.bq, m.bq, v.bq), f(w.bk, g.bk, m.bk, v.bk), f(w.bv, g.bv, m.bv, v.bv), f(w.bo, g.bo, m.bo, v.bo);
}

/// The weights' shape with every entry 0 (gradient sums, moments).
sdpa::AttentionWeights<float> zeros_like(const sdpa::AttentionWeights<float>& w) {
  sdpa::AttentionWeights<float> z = w;
  for (Matrix* m : {&z.Wq, &z.Wk, &z.Wv, &z.Wo}) m->setZero();
  for (RowVector* b : {&z.bq, &z.bk, &z.bv, &z.bo}) b->setZero();
  return z;
}

float accuracy(const sdpa::SelfAttention<float>& layer, std::mt19937& rng, int count, const sdpa::Options& options) {
  int right = 0;
  for (int i = 0; i < count; ++i) {
    const Example e = draw(rng);
    Matrix::Index guess = 0;
    layer.forward(e.query, e.memory, options).row(0).maxCoeff(&guess);
    right += int(guess) == e.answer;
  }
  return float(right) / float(count);
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 400;
  unsigned seed = 1;
  for (int a = 1; a + 1 < argc; a += 2) {
    if (!std::strcmp(argv[a], "--steps")) steps = std::atoi(argv[a + 1]);
    if (!std::strcmp(argv[a], "--seed")) seed = unsigned(std::atoi(argv[a + 1]));
  }
  std::mt19937 rng(seed);

  // The layer: queries and memory of kWidth features, 2 heads of 16, a read-out to kValues logits.
  sdpa::AttentionWeights<float> w = sdpa::SelfAttention<float>::random(kWidth, kHeads, seed).weights();
  w.Wo = w.Wo.leftCols(kValues).eval();
  w.bo = w.bo.head(kValues).eval();
  sdpa::AttentionWeights<float> m = zeros_like(w), v = zeros_like(w);
  sdpa::Options options;
  options.threads = 1;  // a 1 x 8 attention: threads would only add overhead
  const Adam adam;

  std::printf("step   loss    accuracy (500 new dictionaries)\n");
  for (int t = 1; t <= steps; ++t) {
    const sdpa::SelfAttention<float> layer(w, kHeads);
    sdpa::AttentionWeights<float> sum = zeros_like(w);
    float loss = 0;
    for (int b = 0; b < kBatch; ++b) {
      const Example e = draw(rng);
      Matrix d_logits;
      loss += cross_entropy(layer.forward(e.query, e.memory, options), e.answer, d_logits);
      sdpa::LayerGradients<float> g = layer.backward(e.query, e.memory, d_logits, options);
      for_each_parameter(sum, g.weights, m, v,
                         [](auto& total, auto& gradient, auto&, auto&) { total += gradient; });
    }
    for_each_parameter(w, sum, m, v, [&](auto& parameter, auto& gradient, auto& m1, auto& m2) {
      gradient /= float(kBatch);
      adam.step(parameter, gradient, m1, m2, t);
    });
    if (t == 1 || t == 25 || t == 50 || t % 100 == 0) {
      std::mt19937 test_rng(1000 + unsigned(t));
      std::printf("%5d  %.4f  %5.1f%%\n", t, loss / kBatch,
                  100 * accuracy(sdpa::SelfAttention<float>(w, kHeads), test_rng, 500, options));
    }
  }
  std::mt19937 test_rng(12345);
  const float final_accuracy = accuracy(sdpa::SelfAttention<float>(w, kHeads), test_rng, 2000, options);
  std::printf("accuracy on 2000 new dictionaries: %.1f%% (needs 95%%): %s\n", 100 * final_accuracy,
              final_accuracy >= 0.95f ? "ok" : "FAILED");
  return final_accuracy >= 0.95f ? 0 : 1;
}
