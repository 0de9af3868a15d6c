// training_ratio.cpp - forward + backward against the forward alone, alternated in one loop.
//
// bench_attention's training/* benchmarks run each mode on its own, seconds apart; on these
// noisy VMs the machine's speed drifts between them. Here one forward and one backward of the
// same 8 heads (N = 2048, column slices of N x 8d matrices, Kernel::Simd) alternate 7 times,
// and the medians of (forward + backward) / forward and of the backward's rate over the
// forward's (2.5 forwards of FLOPs) are printed: ratios of times measured milliseconds apart.
//
//   training_ratio D THREADS [CAUSAL]      e.g. training_ratio 128 2
#include <sdpa/sdpa.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: training_ratio D THREADS [CAUSAL]\n");
    return 2;
  }
  using Matrix = sdpa::Matrix<float>;
  const int n = 2048, heads = 8, d = std::atoi(argv[1]), threads = std::atoi(argv[2]);
  const bool causal = argc > 3 && std::atoi(argv[3]) != 0;
  std::srand(1234);
  const Matrix q = Matrix::Random(n, heads * d), k = Matrix::Random(n, heads * d), v = Matrix::Random(n, heads * d);
  const Matrix d_out = Matrix::Random(n, heads * d);
  Matrix o(n, heads * d), dq(n, heads * d), dk(n, heads * d), dv(n, heads * d), lse(heads, n);
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.threads = threads;
  options.causal = causal;
  const auto forward = [&] {
    for (int h = 0; h < heads; ++h)
      sdpa::attention_into(q.middleCols(h * d, d), k.middleCols(h * d, d), v.middleCols(h * d, d),
                           o.middleCols(h * d, d), lse.row(h).transpose(), options);
  };
  const auto backward = [&] {
    for (int h = 0; h < heads; ++h)
      sdpa::attention_backward_into(q.middleCols(h * d, d), k.middleCols(h * d, d), v.middleCols(h * d, d),
                                    o.middleCols(h * d, d), lse.row(h).transpose(), d_out.middleCols(h * d, d),
                                    dq.middleCols(h * d, d), dk.middleCols(h * d, d), dv.middleCols(h * d, d), options);
  };
  const auto seconds = [](const auto& f) {
    const auto start = std::chrono::steady_clock::now();
    f();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  forward();  // warm-up: the scratch of both passes, the OpenMP threads
  backward();
  std::vector<double> ratio, rate;
  for (int r = 0; r < 7; ++r) {
    const double f = seconds(forward), b = seconds(backward);
    ratio.push_back((f + b) / f);
    rate.push_back(2.5 * f / b);
  }
  std::sort(ratio.begin(), ratio.end());
  std::sort(rate.begin(), rate.end());
  std::printf("%s, N %d, d %d, %d heads, %d threads, causal %d: (forward + backward) / forward %.2f "
              "(min %.2f, max %.2f); backward GFLOP/s / forward GFLOP/s %.2f\n",
              sdpa::isa_name(sdpa::isa()), n, d, heads, threads, int(causal), ratio[3], ratio[0], ratio[6], rate[3]);
}
