// bench_attention.cpp - attention throughput in GFLOP/s, beside the machine's ceilings.
//
// Every figure here is meant to be read as a ratio against a baseline measured in the same
// run (docs/design.md, "Performance model": the machines are shared and noisy). Registered side by side, per shape:
//
//   fma_peak/ISA/threads:T                          the fp32 FMA ceiling of each ISA the CPU has
//                                                   (independent FMA chains on its vectors)
//   sgemm/N:n/d:d/threads:T                         Eigen GEMM, same FLOPs and shape as attention
//   attention/simd/N:n/d:d/causal:c/threads:T       sdpa, Kernel::Simd, built with this file's -march
//   attention/simd_dispatch/...                     the same, built for baseline x86-64 with
//                                                   SDPA_DISPATCH (dispatch_build.cpp): its own pick
//   attention/simd_dispatch_avx2/...                that build's AVX2 kernels (on an AVX-512 CPU),
//                                                   to read against fma_peak/avx2
//   attention/simd_bf16/..., attention/simd_f16/... Kernel::Simd on Eigen::bfloat16 / Eigen::half Q, K,
//                                                   V and output (the same values rounded), N >= 1024;
//   attention/simd_dispatch[_avx2]_{bf16,f16}/...   and the dispatch build's: read against attention/simd
//
// The Simd paths also report peak_fraction: their rate over the FMA rate of the ISA that ran,
// the FMA loop run right after each iteration (see PeakFraction).
//   attention/blocked/...                           sdpa, Kernel::Blocked (portable scalar tiles)
//   attention/reference/...                         sdpa, Kernel::Reference (materialised scores)
//   attention/eigen_typical/N:n/d:d/causal:0/...    unfused Eigen, fresh temporaries, as people write it
//   attention/eigen_careful/N:n/d:d/causal:0/...    unfused Eigen, preallocated, in-place softmax
//
// Training (sdpa/backward.hpp), N = 1024 and 2048:
//   training/forward/...                            Kernel::Simd forward with its LSEs, as training runs it
//   training/backward/...                           attention_backward_into alone (O and LSEs given)
//   training/forward_backward/...                   both: the bar is <= 4x training/forward's time
//   training/eigen_backward_careful/...causal:0     the backward unfused in Eigen, preallocated, in place
// backward counts 10 N^2 d H FLOPs (five products; causal half), forward_backward 14 N^2 d H.
//
// One iteration = H = 8 heads. Q, K, V and the output are N x (8 d) row-major matrices (the
// projected [tokens, heads * d] layout); head h reads and writes the column slice
// [h d, (h + 1) d) in place, without copying. Nothing is allocated inside the timed loop
// except by the code under test (the Reference path and eigen_typical allocate by design).
//
// FLOPs per iteration: 4 N^2 d H (2 for Q K^T, 2 for P V); causal counts only the unmasked
// pairs, 4 d H N (N + 1) / 2, so a causal path doing half the work at the same speed shows
// the same GFLOP/s. All times are wall-clock (UseRealTime: the OpenMP paths run on several
// threads), which appends "/real_time" to every name.
//
//   bench_attention --benchmark_filter='fma_peak|N:2048/d:64/(causal:0/)?threads:1'
//   bench_attention --benchmark_out=results.json --benchmark_out_format=json
//   python3 benchmarks/plot.py results.json -o docs/benchmark.svg
//
// Timing: benchmark's default --benchmark_min_time (0.5 s) for every size, deliberately not
// a per-benchmark MinTime(), which would override the flag (--benchmark_min_time=0.05 gives
// a quick look). The largest shapes take more than 0.5 s per iteration and run 1-2 iterations.
// A full default run takes about 3 minutes here; add --benchmark_repetitions=5 for medians
// (plot.py plots the median aggregate when there is one).
#include <sdpa/config.hpp>
#include <sdpa/sdpa.hpp>

#include "context.hpp"
#include "dispatch_build.hpp"
#ifndef SDPA_BENCH_DISPATCH
#define SDPA_BENCH_DISPATCH 0  // 1 when dispatch_build.cpp is linked in (x86-64, GCC or Clang)
#endif
#include <sdpa/version.hpp>

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif
#if SDPA_ARCH_X86_64
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

namespace {

using sdpa::Index;
using RowMatrix = sdpa::Matrix<float>;

constexpr int kHeads = 8;  // a typical small model: 8 heads of d = 64 (d_model 512) or 128 (1024)

// N from one tile's worth (128: parallel overhead and tile remainders dominate) through the
// sizes where K and V of a head outgrow the 1 MiB L2 (2 N d 4 B: 1 MiB at N = 2048, d = 64)
// and the N x N score matrix of the unfused versions outgrows the 32 MiB L3 (64 MiB at 4096).
const std::vector<Index> kSizes = {128, 512, 1024, 2048, 4096};
// d = 64 and 128: the two head sizes of nearly every published model; 128 doubles the work
// per score, so the exp/softmax share of the time halves.
const std::vector<Index> kHeadDims = {64, 128};
const std::vector<int> kThreads = {1, 2};  // the machine has 2 cores

double attention_flops(Index n, Index d, bool causal) {
  const double pairs = causal ? double(n) * double(n + 1) / 2.0 : double(n) * double(n);
  return 4.0 * pairs * double(d) * kHeads;
}

void set_gflops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}

// ---------------------------------------------------------------------------------------
// Shared buffers. Touching fresh memory costs 2-12 us per 4 KiB page on these VMs (see
// bench_memory's control/touch_after_reset), so every buffer is allocated and filled once per
// shape, outside the timed loops, and reused by all the paths of that shape (they are
// registered next to each other).

struct Workspace {
  Index n = -1, d = -1;
  RowMatrix q, k, v, out;  // (N, H d): head h is columns [h d, (h + 1) d)
  RowMatrix a, b;          // sgemm operands: (N, H 2d) and (H 2d, N), head h a slice of each
  RowMatrix nn;            // (N, N): sgemm's C and eigen_careful's score buffer
  RowMatrix d_out, dq, dk, dv, nn2;  // training: dO, the gradients, eigen_backward_careful's dP
  sdpa::Matrix<float> lse;           // (H, N): each head's LSEs

  static Workspace& get(Index n, Index d) {
    static Workspace w;
    if (w.n != n || w.d != d) {
      w = Workspace{};  // frees the previous shape's buffers first
      w.n = n;
      w.d = d;
      std::srand(1234);
      w.q = RowMatrix::Random(n, kHeads * d);
      w.k = RowMatrix::Random(n, kHeads * d);
      w.v = RowMatrix::Random(n, kHeads * d);
      w.out = RowMatrix::Zero(n, kHeads * d);
    }
    return w;
  }
  void need_gemm_operands() {
    if (a.size() == 0) {
      a = RowMatrix::Random(n, kHeads * 2 * d);
      b = RowMatrix::Random(kHeads * 2 * d, n);
    }
    need_nn();
  }
  void need_nn() {
    if (nn.size() == 0) nn = RowMatrix::Zero(n, n);
  }
  void need_training() {
    if (d_out.size() != 0) return;
    d_out = RowMatrix::Random(n, kHeads * d);
    dq = dk = dv = RowMatrix::Zero(n, kHeads * d);
    lse = sdpa::Matrix<float>::Zero(kHeads, n);
  }
};

void set_threads(int threads) {
  // Eigen's GEMM (sgemm and the eigen_* baselines) takes its thread count from this global;
  // sdpa's paths take theirs from sdpa::Options::threads.
  Eigen::setNbThreads(threads);
}

sdpa::Kernel kernel_of(const std::string& path) {
  if (path == "simd") return sdpa::Kernel::Simd;
  if (path == "blocked") return sdpa::Kernel::Blocked;
  return sdpa::Kernel::Reference;
}

// ---------------------------------------------------------------------------------------
// (a) the fp32 FMA ceiling of each ISA: per thread, kChains independent accumulators on its
// vectors, each step one FMA per chain. Two FMA pipes x 4-cycle latency need >= 8 FMAs in
// flight; 16 chains leave room for a 5-6 cycle latency and stay within 32 zmm registers (on
// AVX2 they take all 16 ymm: the compiler keeps them there, as the loop needs nothing else).
// Written with each ISA's intrinsics and target attributes, so that one binary measures the
// AVX2 ceiling on an AVX-512 machine too.

/// `x`, through a volatile: a value the compiler cannot see. (Not benchmark::DoNotOptimize on
/// a float: with GCC 12 and benchmark 1.7.1 it sometimes handed the loop garbage, measured as
/// a multiplier of -9e35, whose inf and NaN then ran the FMA loop far below its speed.)
float opaque(float x) {
  volatile float hidden = x;
  return hidden;
}

constexpr int kChains = 16;
constexpr long kSteps = 1L << 16;  // 2^20 vector FMAs per thread per iteration: ~0.12 ms, >> fork/join

#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
// `chains` accumulators must fit the register file with the two constants: 16 ymm chains on
// AVX2's 16 registers spilled three to the stack, and the store-to-load round trip of each
// step held the loop to ~69% of the FMA rate on Zen 3 (attention then measured "108%" of it).
// 8 chains cover 2 pipes x 4 cycles of latency. The FLOP count is the same either way: the
// loop runs kSteps * kChains / chains steps of `chains` FMAs.
#define SDPA_BENCH_FMA_CHAINS(name, features, Reg, set1, fmadd, add, floats, chains)       \
  __attribute__((target(features))) float name(float multiplier, float addend) {        \
    Reg acc[chains];                                                                    \
    const Reg a = set1(multiplier), b = set1(addend);                                   \
    for (int c = 0; c < chains; ++c) acc[c] = set1(float(c));                           \
    static_assert(kSteps * kChains % chains == 0, "whole steps");                       \
    for (long step = 0; step < kSteps * kChains / chains; ++step) {                     \
      _Pragma("GCC unroll 16") for (int c = 0; c < chains; ++c) acc[c] = fmadd(acc[c], a, b); \
    }                                                                                   \
    Reg sum = acc[0];                                                                   \
    for (int c = 1; c < chains; ++c) sum = add(sum, acc[c]);                            \
    float lanes[floats];                                                                \
    std::memcpy(lanes, &sum, sizeof lanes);                                             \
    return lanes[0];                                                                    \
  }
SDPA_BENCH_FMA_CHAINS(fma_chains_avx512, "avx512f", __m512, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, 16, 16)
SDPA_BENCH_FMA_CHAINS(fma_chains_avx2, "avx2,fma", __m256, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, 8, 8)
#endif

float fma_chains_native(float multiplier, float addend) {  // the build's own vectors (any architecture)
  using sdpa_bench::NativeVec;
  NativeVec acc[kChains];
  const NativeVec a = NativeVec::broadcast(multiplier), b = NativeVec::broadcast(addend);
  for (int c = 0; c < kChains; ++c) acc[c] = NativeVec::broadcast(float(c));
  for (long step = 0; step < kSteps; ++step) {
#pragma GCC unroll 16
    for (int c = 0; c < kChains; ++c) acc[c] = fma(acc[c], a, b);  // x <- x a + b: converges, no inf/denormal
  }
  NativeVec sum = acc[0];
  for (int c = 1; c < kChains; ++c) sum = sum + acc[c];
  float lanes[NativeVec::width];
  sum.store(lanes);
  return lanes[0];
}

void BM_fma_peak(benchmark::State& state, float (*chains)(float, float), int floats, int threads) {
  for (auto _ : state) {
    // The inputs are opaque to the compiler and the result is consumed: nothing folds away.
    const float multiplier = opaque(0.5f), addend = opaque(0.25f);
#if SDPA_HAS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
    {
      float result = chains(multiplier, addend);
      benchmark::DoNotOptimize(result);
    }
  }
  set_gflops(state, 2.0 * floats * double(kChains) * double(kSteps) * threads);
}

/// Every FMA ceiling this CPU has: (name, chains, floats per vector).
struct FmaPeak {
  const char* isa;
  float (*chains)(float, float);
  int floats;
};
std::vector<FmaPeak> fma_peaks() {
  std::vector<FmaPeak> peaks;
#if SDPA_ARCH_X86_64 && (defined(__GNUC__) || defined(__clang__))
  if (sdpa::cpu_supports(sdpa::Isa::avx512)) peaks.push_back({"avx512", fma_chains_avx512, 16});
  if (sdpa::cpu_supports(sdpa::Isa::avx2)) peaks.push_back({"avx2", fma_chains_avx2, 8});
#endif
  if (peaks.empty()) peaks.push_back({sdpa::isa_name(sdpa::isa()), fma_chains_native, sdpa_bench::NativeVec::width});
  return peaks;
}

/// The FMA rate of `peak` on `threads` threads, in GFLOP/s, over about a millisecond.
double fma_rate(const FmaPeak& peak, int threads) {
  const float multiplier = opaque(0.5f), addend = opaque(0.25f);
  constexpr int kBlocks = 8;
  const auto start = std::chrono::steady_clock::now();
#if SDPA_HAS_OPENMP
#pragma omp parallel num_threads(threads)
#endif
  for (int block = 0; block < kBlocks; ++block) {
    float result = peak.chains(multiplier, addend);
    benchmark::DoNotOptimize(result);
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return 2.0 * peak.floats * double(kChains) * double(kSteps) * kBlocks * threads / seconds / 1e9;
}

/// The "peak_fraction" counter: attention's rate over the FMA rate of the ISA that ran, with
/// the FMA loop run (outside the timed region) right after every iteration. The machine's
/// speed drifts by 25% and more between seconds; the two rates measured milliseconds apart
/// see the same machine, which the medians of separate benchmarks do not. The FMA rates'
/// median is the divisor: a millisecond window is now and then preempted, an outlier.
class PeakFraction {
 public:
  PeakFraction(const char* isa, int threads) : threads_(threads) {
    for (const FmaPeak& peak : fma_peaks())
      if (std::string(peak.isa) == isa) peak_ = peak;
  }
  void start() { start_ = std::chrono::steady_clock::now(); }
  /// After an iteration of `flops`: pauses the benchmark's timer to measure the FMA rate.
  void stop(benchmark::State& state, double flops) {
    seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    flops_ += flops;
    state.PauseTiming();
    if (peak_.chains) fma_rates_.push_back(fma_rate(peak_, threads_));
    state.ResumeTiming();
  }
  void report(benchmark::State& state) {
    if (fma_rates_.empty()) return;
    std::nth_element(fma_rates_.begin(), fma_rates_.begin() + fma_rates_.size() / 2, fma_rates_.end());
    state.counters["peak_fraction"] = flops_ / seconds_ / 1e9 / fma_rates_[fma_rates_.size() / 2];
  }

 private:
  FmaPeak peak_{nullptr, nullptr, 0};
  int threads_;
  std::chrono::steady_clock::time_point start_;
  double seconds_ = 0, flops_ = 0;
  std::vector<double> fma_rates_;
};

// ---------------------------------------------------------------------------------------
// sdpa paths

void run_sdpa_heads(Workspace& w, Index heads, const sdpa::Options& options) {
  const Index d = w.d;
  for (Index h = 0; h < heads; ++h)
    sdpa::attention_into(w.q.middleCols(h * d, d), w.k.middleCols(h * d, d), w.v.middleCols(h * d, d),
                         w.out.middleCols(h * d, d), options);
}

/// The workspace's Q, K, V (and an output) rounded to the 16-bit type S, made once per shape.
template <class S>
struct HalfWorkspace {
  using Half = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Index n = -1, d = -1;
  Half q, k, v, out;
  static HalfWorkspace& get(const Workspace& w) {
    static HalfWorkspace h;
    if (h.n != w.n || h.d != w.d) {
      h.n = w.n;
      h.d = w.d;
      h.q = w.q.cast<S>();
      h.k = w.k.cast<S>();
      h.v = w.v.cast<S>();
      h.out = w.out.cast<S>();
    }
    return h;
  }
};

/// Kernel::Simd on 16-bit storage, 8 heads as column slices, as BM_sdpa does for float.
template <class S>
void BM_sdpa_half(benchmark::State& state, Index n, Index d, bool causal, int threads) {
  set_threads(threads);
  HalfWorkspace<S>& w = HalfWorkspace<S>::get(Workspace::get(n, d));
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.causal = causal;
  options.threads = threads;
  const auto run = [&](Index heads) {
    for (Index h = 0; h < heads; ++h)
      sdpa::attention_into(w.q.middleCols(h * d, d), w.k.middleCols(h * d, d), w.v.middleCols(h * d, d),
                           w.out.middleCols(h * d, d), options);
  };
  run(1);  // untimed: grows the scratch
  for (auto _ : state) {
    run(kHeads);
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(n, d, causal));
}

void BM_sdpa(benchmark::State& state, std::string path, Index n, Index d, bool causal, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  sdpa::Options options;
  options.kernel = kernel_of(path);
  options.causal = causal;
  options.threads = threads;
  // Warm-up on one head, untimed: grows the per-thread scratch of the tiled paths to this
  // shape, so that the (few) iterations of the big sizes do not pay its first touch.
  run_sdpa_heads(w, 1, options);
  PeakFraction fraction(sdpa::isa_name(sdpa::isa()), threads);
  for (auto _ : state) {
    fraction.start();
    run_sdpa_heads(w, kHeads, options);
    benchmark::ClobberMemory();
    if (path == "simd") fraction.stop(state, attention_flops(n, d, causal));
  }
  fraction.report(state);
  set_gflops(state, attention_flops(n, d, causal));
}

#if SDPA_BENCH_DISPATCH
void BM_sdpa_dispatch(benchmark::State& state, const char* isa, Index n, Index d, bool causal, int threads,
                      DispatchStorage storage) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  const DispatchHeads call{w.q.data(), w.k.data(), w.v.data(), w.out.data(), long(n), long(d), 1,
                           long(w.q.cols()), causal, threads, storage};
  DispatchHeads all = call;
  all.heads = kHeads;
  const char* ran = dispatch_build_attention(call, isa);
  PeakFraction fraction(ran, threads);
  for (auto _ : state) {
    fraction.start();
    ran = dispatch_build_attention(all, isa);
    benchmark::ClobberMemory();
    fraction.stop(state, attention_flops(n, d, causal));
  }
  fraction.report(state);
  state.SetLabel(ran);
  set_gflops(state, attention_flops(n, d, causal));
}
#endif

// ---------------------------------------------------------------------------------------
// (c) unfused Eigen as typically written: every intermediate is a fresh matrix each call.

void BM_eigen_typical(benchmark::State& state, Index n, Index d, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    for (Index h = 0; h < kHeads; ++h) {
      const auto Q = w.q.middleCols(h * d, d);
      const auto K = w.k.middleCols(h * d, d);
      const auto V = w.v.middleCols(h * d, d);
      Eigen::MatrixXf S = (Q * K.transpose()) * scale;
      Eigen::VectorXf row_max = S.rowwise().maxCoeff();
      Eigen::MatrixXf E = (S.colwise() - row_max).array().exp();
      Eigen::VectorXf row_sum = E.rowwise().sum();
      Eigen::MatrixXf P = E.array().colwise() / row_sum.array();
      Eigen::MatrixXf O = P * V;
      w.out.middleCols(h * d, d) = O;
    }
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(n, d, false));
}

// ---------------------------------------------------------------------------------------
// (d) unfused Eigen written carefully: one preallocated row-major score buffer, .noalias()
// products straight into it and into the output slice, a stable softmax in place, row by
// row (rows split over the threads, as the GEMMs are by Eigen).

void softmax_rows_in_place(RowMatrix& s, int threads) {
  const Index rows = s.rows();
  (void)threads;
#if SDPA_HAS_OPENMP
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1)
#endif
  for (Index i = 0; i < rows; ++i) {
    auto row = s.row(i).array();
    const float row_max = row.maxCoeff();
    row = (row - row_max).exp();
    row *= 1.0f / row.sum();
  }
}

void BM_eigen_careful(benchmark::State& state, Index n, Index d, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  w.need_nn();
  RowMatrix& S = w.nn;  // (N, N)
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    for (Index h = 0; h < kHeads; ++h) {
      S.noalias() = scale * (w.q.middleCols(h * d, d) * w.k.middleCols(h * d, d).transpose());
      softmax_rows_in_place(S, threads);
      w.out.middleCols(h * d, d).noalias() = S * w.v.middleCols(h * d, d);
    }
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(n, d, false));
}

// ---------------------------------------------------------------------------------------
// (e) training: the forward with its LSEs, the backward, both; and an unfused Eigen backward.

double backward_flops(Index n, Index d, bool causal) { return 2.5 * attention_flops(n, d, causal); }

void run_forward_with_lse(Workspace& w, Index heads, const sdpa::Options& options) {
  const Index d = w.d;
  for (Index h = 0; h < heads; ++h)
    sdpa::attention_into(w.q.middleCols(h * d, d), w.k.middleCols(h * d, d), w.v.middleCols(h * d, d),
                         w.out.middleCols(h * d, d), w.lse.row(h).transpose(), options);
}

void run_backward(Workspace& w, Index heads, const sdpa::Options& options) {
  const Index d = w.d;
  for (Index h = 0; h < heads; ++h)
    sdpa::attention_backward_into(w.q.middleCols(h * d, d), w.k.middleCols(h * d, d), w.v.middleCols(h * d, d),
                                  w.out.middleCols(h * d, d), w.lse.row(h).transpose(), w.d_out.middleCols(h * d, d),
                                  w.dq.middleCols(h * d, d), w.dk.middleCols(h * d, d), w.dv.middleCols(h * d, d),
                                  options);
}

/// `mode`: "forward", "backward" or "forward_backward".
void BM_training(benchmark::State& state, std::string mode, Index n, Index d, bool causal, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  w.need_training();
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.causal = causal;
  options.threads = threads;
  run_forward_with_lse(w, kHeads, options);  // untimed: the O and LSEs the backward reads, and warm scratch
  run_backward(w, 1, options);
  const bool forward = mode != "backward", backward = mode != "forward";
  const double flops = (forward ? attention_flops(n, d, causal) : 0) + (backward ? backward_flops(n, d, causal) : 0);
  PeakFraction fraction(sdpa::isa_name(sdpa::isa()), threads);
  for (auto _ : state) {
    fraction.start();
    if (forward) run_forward_with_lse(w, kHeads, options);
    if (backward) run_backward(w, kHeads, options);
    benchmark::ClobberMemory();
    fraction.stop(state, flops);
  }
  fraction.report(state);
  set_gflops(state, flops);
}

/// The backward unfused, as one would write it carefully in Eigen: preallocated N x N buffers
/// for P and dP, products with .noalias(), elementwise steps in place.
void BM_eigen_backward_careful(benchmark::State& state, Index n, Index d, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  w.need_nn();
  w.need_training();
  if (w.nn2.size() == 0) w.nn2 = RowMatrix::Zero(n, n);
  RowMatrix &P = w.nn, &dS = w.nn2;
  Eigen::VectorXf row_dots(n);
  const float scale = 1.0f / std::sqrt(float(d));
  for (auto _ : state) {
    for (Index h = 0; h < kHeads; ++h) {
      const auto Q = w.q.middleCols(h * d, d), K = w.k.middleCols(h * d, d), V = w.v.middleCols(h * d, d);
      const auto O = w.out.middleCols(h * d, d), dO = w.d_out.middleCols(h * d, d);
      P.noalias() = scale * (Q * K.transpose());
      softmax_rows_in_place(P, threads);
      w.dv.middleCols(h * d, d).noalias() = P.transpose() * dO;
      dS.noalias() = dO * V.transpose();
      row_dots = (dO.array() * O.array()).rowwise().sum();
      dS.array() = P.array() * (dS.colwise() - row_dots).array();
      w.dq.middleCols(h * d, d).noalias() = scale * (dS * K);
      w.dk.middleCols(h * d, d).noalias() = scale * (dS.transpose() * Q);
    }
    benchmark::ClobberMemory();
  }
  set_gflops(state, backward_flops(n, d, false));
}

// ---------------------------------------------------------------------------------------
// (b) the practical ceiling: Eigen sgemm with one head's FLOPs and score shape,
// C (N, N) = A (N, 2d) B (2d, N), H times per iteration: 2 N^2 (2d) H = 4 N^2 d H FLOPs.
// With a depth of only 2d, C is written after few FLOPs per element; at N = 4096 it is 64 MiB,
// larger than L3, and the GEMM slows down: there a fused attention can beat this "ceiling".

void BM_sgemm(benchmark::State& state, Index n, Index d, int threads) {
  set_threads(threads);
  Workspace& w = Workspace::get(n, d);
  w.need_gemm_operands();
  for (auto _ : state) {
    for (Index h = 0; h < kHeads; ++h)
      w.nn.noalias() = w.a.middleCols(h * 2 * d, 2 * d) * w.b.middleRows(h * 2 * d, 2 * d);
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(n, d, false));
}

// ---------------------------------------------------------------------------------------
// The grid. Shapes outer, paths inner, so that the paths of one shape run back to back on
// the same buffers and in the same machine state.
//
// Reference materialises N x N scores per head and computes them row by row with Eigen dot
// products (deterministic whatever the thread count, unlike a threaded GEMM); Blocked is the
// scalar, portable tiled path. Both are an order of magnitude below Simd and flat in N well
// before 4096, where 8 heads would take seconds per iteration, so they stop at N = 2048 (the
// shape quoted side by side).
constexpr Index kSlowPathMaxN = 2048;
constexpr Index kDispatchMinN = 1024;

void register_all() {
  for (const FmaPeak& peak : fma_peaks())
    for (int threads : kThreads)
      benchmark::RegisterBenchmark(("fma_peak/" + std::string(peak.isa) + "/threads:" + std::to_string(threads)).c_str(),
                                   BM_fma_peak, peak.chains, peak.floats, threads)
          ->UseRealTime();

  for (Index n : kSizes)
    for (Index d : kHeadDims)
      for (int threads : kThreads) {
        const std::string shape = "N:" + std::to_string(n) + "/d:" + std::to_string(d);
        const std::string t = "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(("sgemm/" + shape + t).c_str(), BM_sgemm, n, d, threads)->UseRealTime();
        for (bool causal : {false, true}) {
          const std::string tail = shape + "/causal:" + std::to_string(int(causal)) + t;
          for (const std::string path : {"simd", "blocked", "reference"}) {
            if (path != "simd" && n > kSlowPathMaxN) continue;
            benchmark::RegisterBenchmark(("attention/" + path + "/" + tail).c_str(), BM_sdpa, path, n, d, causal,
                                         threads)
                ->UseRealTime();
          }
#if SDPA_BENCH_DISPATCH
          // The dispatch build beside the -march one, from the sizes where the kernels dominate.
          if (n >= kDispatchMinN) {
            for (const auto& [suffix, storage] : {std::pair{"", DispatchStorage::f32}, {"_bf16", DispatchStorage::bf16},
                                                  {"_f16", DispatchStorage::f16}}) {
              benchmark::RegisterBenchmark(("attention/simd_dispatch" + std::string(suffix) + "/" + tail).c_str(),
                                           BM_sdpa_dispatch, nullptr, n, d, causal, threads, storage)
                  ->UseRealTime();
              if (sdpa::cpu_supports(sdpa::Isa::avx512))  // otherwise simd_dispatch already runs AVX2
                benchmark::RegisterBenchmark(("attention/simd_dispatch_avx2" + std::string(suffix) + "/" + tail).c_str(),
                                             BM_sdpa_dispatch, "avx2", n, d, causal, threads, storage)
                    ->UseRealTime();
            }
          }
#endif
          if (n >= kDispatchMinN) {  // 16-bit storage, from the sizes where the kernels dominate
            benchmark::RegisterBenchmark(("attention/simd_bf16/" + tail).c_str(), BM_sdpa_half<Eigen::bfloat16>, n, d,
                                         causal, threads)
                ->UseRealTime();
            benchmark::RegisterBenchmark(("attention/simd_f16/" + tail).c_str(), BM_sdpa_half<Eigen::half>, n, d,
                                         causal, threads)
                ->UseRealTime();
          }
          if (n == 1024 || n == 2048) {
            for (const std::string mode : {"forward", "backward", "forward_backward"})
              benchmark::RegisterBenchmark(("training/" + mode + "/" + tail).c_str(), BM_training, mode, n, d, causal,
                                           threads)
                  ->UseRealTime();
            if (!causal)
              benchmark::RegisterBenchmark(("training/eigen_backward_careful/" + tail).c_str(),
                                           BM_eigen_backward_careful, n, d, threads)
                  ->UseRealTime();
          }
          // The unfused baselines compute every pair whatever the mask: causal would only
          // add a masking pass to the same work, so they are measured non-causal only.
          if (causal) continue;
          benchmark::RegisterBenchmark(("attention/eigen_typical/" + tail).c_str(), BM_eigen_typical, n, d, threads)
              ->UseRealTime();
          benchmark::RegisterBenchmark(("attention/eigen_careful/" + tail).c_str(), BM_eigen_careful, n, d, threads)
              ->UseRealTime();
        }
      }
}

// ---------------------------------------------------------------------------------------
// Context: what sdpa was built for, and a check that every path computes the same thing.


// Small shape, every path against eigen_careful: a baseline that computed something else
// would make every ratio meaningless.
std::string self_check() {
  const Index n = 128, d = 64;
  set_threads(1);
  Workspace& w = Workspace::get(n, d);
  RowMatrix expected(n, kHeads * d);
  w.need_nn();
  const float scale = 1.0f / std::sqrt(float(d));
  for (Index h = 0; h < kHeads; ++h) {
    w.nn.noalias() = scale * (w.q.middleCols(h * d, d) * w.k.middleCols(h * d, d).transpose());
    softmax_rows_in_place(w.nn, 1);
    expected.middleCols(h * d, d).noalias() = w.nn * w.v.middleCols(h * d, d);
  }
  char text[256];
  double worst = 0;
  std::string detail;
  for (const char* path : {"simd", "blocked", "reference"}) {
    sdpa::Options options;
    options.kernel = kernel_of(path);
    options.threads = 1;
    run_sdpa_heads(w, kHeads, options);
    const double diff = (w.out - expected).cwiseAbs().maxCoeff();
    worst = std::max(worst, diff);
    std::snprintf(text, sizeof text, "%s%s %.1e", detail.empty() ? "" : ", ", path, diff);
    detail += text;
  }
  std::snprintf(text, sizeof text, "%s: max |path - eigen_careful| at N=%d d=%d: ", worst < 1e-4 ? "ok" : "MISMATCH",
                int(n), int(d));
  return text + detail;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  sdpa_bench::add_build_context();
  benchmark::AddCustomContext("heads_per_iteration", std::to_string(kHeads));
  benchmark::AddCustomContext("self_check", self_check());

  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
