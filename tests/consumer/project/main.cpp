// When every key is the same, every query weighs the keys equally: attention returns the mean
// of the value rows, whatever the queries are. Exits 0 when the library agrees.
#include <sdpa/sdpa.hpp>

#include <cmath>
#include <cstdio>

int main() {
  sdpa::Matrix<float> Q(2, 3), K(4, 3), V(4, 2);
  Q << 1, 2, 3, -1, 0, 5;
  K.rowwise() = Eigen::RowVector3f(0.5f, -1.0f, 2.0f);
  V << 1, 10, 2, 20, 3, 30, 6, 60;  // column means 3 and 30
  const sdpa::Matrix<float> O = sdpa::attention(Q, K, V);
  bool ok = true;
  for (int i = 0; i < 2; ++i) ok = ok && std::fabs(O(i, 0) - 3.0f) < 1e-5f && std::fabs(O(i, 1) - 30.0f) < 1e-4f;
  std::printf("consumer: attention over identical keys = mean of values: %s (%g, %g)\n", ok ? "ok" : "WRONG", O(0, 0),
              O(0, 1));
  return ok ? 0 : 1;
}
