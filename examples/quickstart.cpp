// quickstart.cpp - the README's first example, compiled: attention on random Q, K, V.
#include <sdpa/sdpa.hpp>

#include <iostream>

int main() {
  const int tokens = 8, d_k = 16, d_v = 16;
  const sdpa::Matrix<float> Q = sdpa::Matrix<float>::Random(tokens, d_k);  // one row per token
  const sdpa::Matrix<float> K = sdpa::Matrix<float>::Random(tokens, d_k);
  const sdpa::Matrix<float> V = sdpa::Matrix<float>::Random(tokens, d_v);

  sdpa::Matrix<float> O = sdpa::attention(Q, K, V);  // softmax(Q K^T / sqrt(d_k)) V
  std::cout << "O is " << O.rows() << " x " << O.cols() << "; row 0: " << O.row(0) << "\n";

  sdpa::Options options;
  options.causal = true;  // token i sees tokens 0..i only
  sdpa::Matrix<float> C = sdpa::attention(Q, K, V, options);
  std::cout << "causal row 0 (sees only token 0, so equals V row 0): " << C.row(0) << "\n";

  sdpa::Matrix<float> P = sdpa::attention_weights(Q, K, options);  // tokens x tokens, rows sum to 1
  std::cout << "causal weights:\n" << P << "\nrow sums: " << P.rowwise().sum().transpose() << "\n";

  const bool ok = (P.rowwise().sum().array() - 1.0f).abs().maxCoeff() < 1e-5f &&
                  (C.row(0) - V.row(0)).cwiseAbs().maxCoeff() < 1e-5f && P(0, 1) == 0.0f;
  std::cout << (ok ? "ok\n" : "FAILED\n");
  return ok ? 0 : 1;
}
