// bench_memory.cpp - the extra peak memory of one attention call, as the OS sees it.
//
// docs/design.md, "Performance model": the Blocked and Simd paths never hold an Nq x Nk matrix; their extra memory
// is O((Nq + Nk) d) per thread. The Reference path materialises the N x N scores. This binary
// shows both, at one head, non-causal, d = 64:
//
//   N = 4096:   all three paths (Reference's scores: 64 MiB)
//   N = 32768:  Blocked and Simd only (Reference's scores alone would be 4 GiB)
//   backward:   attention_backward_into (Simd) at N = 4096 and 32768, d = 64 and 128: its
//               extra memory beside Q, K, V, O, dO, the LSEs and the three gradients (the
//               forward that makes O and the LSEs runs before the reset)
//
// Each measurement runs in a fork()ed child, so that what one path leaves behind (thread-local
// scratch, the OpenMP thread pool, Eigen's GEMM buffers, pages the allocator keeps) cannot hide
// another path's peak. The child allocates and fills Q, K, V and the output, resets its peak
// RSS (writes "5" to /proc/self/clear_refs), reads VmRSS, makes one attention_into call, reads
// VmHWM, and sends VmHWM - VmRSS and the call's wall time to the parent through a pipe. The
// parent never starts OpenMP threads (forking a process with a thread pool is undefined).
//
// Two controls check the method on this kernel: touching a known 64 MiB after the reset must
// read ~64 MiB, and a 256 MiB spike *before* the reset must read ~0 (the reset worked).
//
// Reported per benchmark (one iteration each; "Time" is the call's wall time in the child,
// a cold call: it includes the first touch of the path's scratch and starting OpenMP threads):
//   extra_peak_MiB   VmHWM - VmRSS before the call: what the call added at its peak
//   rss_before_MiB   the child's RSS with inputs and output allocated
//   inputs_MiB       the call's N x d matrices together (forward: Q, K, V, O; backward: also dO, dQ, dK, dV), for scale
//   scores_MiB       what one N x N float score matrix would take, for scale
//   GFLOPS           4 N^2 d over the call's wall time
//   us_per_4KiB_page (touch control only) what first-touching a fresh page costs here
//
//   bench_memory                          # the whole table, ~30 s (20 of them Blocked at N = 32768)
//   bench_memory --benchmark_filter=simd
#include <sdpa/config.hpp>
#include <sdpa/sdpa.hpp>

#include "context.hpp"

#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

namespace {

using sdpa::Index;
using RowMatrix = sdpa::Matrix<float>;

constexpr double kMiB = 1024.0 * 1024.0;

/// What the child sends back: plain bytes through a pipe.
struct Measurement {
  bool ok = false;
  double rss_before_kib = 0, peak_kib = 0, seconds = 0;
  char error[256] = {};
};

/// A "VmRSS:" / "VmHWM:" line of /proc/self/status, in KiB; -1 if absent.
double status_kib(const char* key) {
  std::ifstream status("/proc/self/status");
  std::string line;
  const std::size_t key_length = std::strlen(key);
  while (std::getline(status, line))
    if (line.compare(0, key_length, key) == 0) return std::atof(line.c_str() + key_length);
  return -1;
}

/// Resets VmHWM to the current RSS (Linux >= 4.0).
bool reset_peak_rss() {
  std::ofstream clear_refs("/proc/self/clear_refs");
  clear_refs << "5";
  clear_refs.flush();
  return bool(clear_refs);
}

/// Runs setup() then the call it returns in a fresh child process; measures only the call.
template <class Setup>
Measurement measure_in_child(Setup setup) {
  Measurement result;
  int fds[2];
  if (pipe(fds) != 0) {
    std::snprintf(result.error, sizeof result.error, "pipe: %s", std::strerror(errno));
    return result;
  }
  std::fflush(nullptr);  // nothing buffered may be written twice
  const pid_t pid = fork();
  if (pid < 0) {
    std::snprintf(result.error, sizeof result.error, "fork: %s", std::strerror(errno));
    close(fds[0]);
    close(fds[1]);
    return result;
  }
  if (pid == 0) {  // child: measure, report, and leave without running the parent's atexit
    close(fds[0]);
    Measurement m;
    try {
      auto call = setup();  // allocates and fills inputs and output
      if (!reset_peak_rss()) {
        std::snprintf(m.error, sizeof m.error, "cannot write /proc/self/clear_refs");
      } else {
        m.rss_before_kib = status_kib("VmRSS:");
        const auto start = std::chrono::steady_clock::now();
        call();
        const auto stop = std::chrono::steady_clock::now();
        m.peak_kib = status_kib("VmHWM:");
        m.seconds = std::chrono::duration<double>(stop - start).count();
        m.ok = m.rss_before_kib >= 0 && m.peak_kib >= 0;
        if (!m.ok) std::snprintf(m.error, sizeof m.error, "no VmRSS/VmHWM in /proc/self/status");
      }
    } catch (const std::exception& e) {
      std::snprintf(m.error, sizeof m.error, "exception: %s", e.what());
    }
    const ssize_t written = write(fds[1], &m, sizeof m);
    _exit(written == ssize_t(sizeof m) ? 0 : 1);
  }
  close(fds[1]);
  std::size_t received = 0;
  while (received < sizeof result) {
    const ssize_t got = read(fds[0], reinterpret_cast<char*>(&result) + received, sizeof result - received);
    if (got <= 0) break;
    received += std::size_t(got);
  }
  close(fds[0]);
  int status = 0;
  waitpid(pid, &status, 0);
  if (received != sizeof result) {
    result = Measurement{};
    std::snprintf(result.error, sizeof result.error, "child died (status %d)", status);
  }
  return result;
}

void report(benchmark::State& state, const Measurement& m) {
  if (!m.ok) {
    state.SkipWithError(m.error);
    return;
  }
  state.SetIterationTime(m.seconds);
  state.counters["extra_peak_MiB"] = (m.peak_kib - m.rss_before_kib) / 1024.0;
  state.counters["rss_before_MiB"] = m.rss_before_kib / 1024.0;
}

// ---------------------------------------------------------------------------------------

/// inputs_MiB (`matrices` N x d float matrices), scores_MiB (one N x N float matrix, for
/// scale) and GFLOPS (`flops_per_n2d` N^2 d FLOPs over the call's time).
void set_size_counters(benchmark::State& state, Index n, Index d, double matrices, double flops_per_n2d) {
  state.counters["inputs_MiB"] = matrices * double(n) * double(d) * sizeof(float) / kMiB;
  state.counters["scores_MiB"] = double(n) * double(n) * sizeof(float) / kMiB;
  state.counters["GFLOPS"] = benchmark::Counter(flops_per_n2d * double(n) * double(n) * double(d),
                                                benchmark::Counter::kIsIterationInvariantRate,
                                                benchmark::Counter::kIs1000);
}

/// An n x d matrix for a measured child (random, or zero for outputs), left to live until the
/// child exits: the call it returns only reads and writes it.
RowMatrix* child_matrix(Index n, Index d, bool random) {
  return new RowMatrix(random ? RowMatrix(RowMatrix::Random(n, d)) : RowMatrix(RowMatrix::Zero(n, d)));
}

void BM_attention_memory(benchmark::State& state, sdpa::Kernel kernel, Index n, Index d, int threads) {
  for (auto _ : state) {
    const Measurement m = measure_in_child([&] {
      RowMatrix *q = child_matrix(n, d, true), *k = child_matrix(n, d, true), *v = child_matrix(n, d, true);
      RowMatrix* out = child_matrix(n, d, false);
      // Eigen's GEMMs (inside Kernel::Reference) take their thread count from this global,
      // not from Options::threads. It starts no thread by itself.
      Eigen::setNbThreads(threads);
      sdpa::Options options;
      options.kernel = kernel;
      options.threads = threads;
      return [=] { sdpa::attention_into(*q, *k, *v, *out, options); };
    });
    report(state, m);
  }
  set_size_counters(state, n, d, 4, 4);
}

void BM_backward_memory(benchmark::State& state, Index n, Index d, int threads) {
  for (auto _ : state) {
    const Measurement m = measure_in_child([&] {
      RowMatrix *q = child_matrix(n, d, true), *k = child_matrix(n, d, true), *v = child_matrix(n, d, true);
      RowMatrix *o = child_matrix(n, d, false), *d_out = child_matrix(n, d, true);
      RowMatrix *dq = child_matrix(n, d, false), *dk = child_matrix(n, d, false), *dv = child_matrix(n, d, false);
      auto* lse = new sdpa::Vector<float>(sdpa::Vector<float>::Zero(n));
      sdpa::Options options;
      options.kernel = sdpa::Kernel::Simd;
      options.threads = threads;
      sdpa::attention_into(*q, *k, *v, *o, *lse, options);
      return [=] { sdpa::attention_backward_into(*q, *k, *v, *o, *lse, *d_out, *dq, *dk, *dv, options); };
    });
    report(state, m);
  }
  set_size_counters(state, n, d, 8, 10);
}

// Control: the call touches exactly `mib` fresh MiB; extra_peak_MiB must read ~mib.
void BM_control_touch(benchmark::State& state, std::size_t mib) {
  for (auto _ : state) {
    const Measurement m = measure_in_child([=] {
      return [=] {
        std::vector<char> block(mib << 20);  // value-initialised: every page written
        benchmark::DoNotOptimize(block.data());
      };
    });
    report(state, m);
    if (m.ok) state.counters["us_per_4KiB_page"] = m.seconds * 1e6 / double(mib * 256);  // first-touch cost
  }
}

// Control: a `mib` MiB spike before the reset, a no-op call after it; extra_peak_MiB must
// read ~0. Without a working reset it would read ~mib.
void BM_control_reset(benchmark::State& state, std::size_t mib) {
  for (auto _ : state) {
    const Measurement m = measure_in_child([=] {
      {
        std::vector<char> spike(mib << 20);  // above malloc's mmap threshold: unmapped when freed
        benchmark::DoNotOptimize(spike.data());
      }
      return [] {};
    });
    report(state, m);
  }
}

void register_all() {
  using sdpa::Kernel;
  benchmark::RegisterBenchmark("control/touch_after_reset:64MiB", BM_control_touch, std::size_t(64))
      ->Iterations(1)->UseManualTime();
  benchmark::RegisterBenchmark("control/spike_before_reset:256MiB", BM_control_reset, std::size_t(256))
      ->Iterations(1)->UseManualTime();

  struct Path {
    const char* name;
    Kernel kernel;
  };
  constexpr Index d = 64;
  // N = 4096: Reference's 64 MiB of scores is still affordable, and the tiled paths' extra
  // memory can be compared with it. N = 32768: 8x the tokens; the tiled paths' extra memory
  // must grow at most 8x (O(N d)), where the scores would grow 64x (to 4 GiB).
  for (Index n : {Index(4096), Index(32768)})
    for (int threads : {1, 2})
      for (const Path& path : {Path{"reference", Kernel::Reference}, Path{"blocked", Kernel::Blocked},
                               Path{"simd", Kernel::Simd}}) {
        if (path.kernel == Kernel::Reference && n > 4096) continue;  // 4 GiB of scores
        // Blocked (scalar) needs ~20 s of CPU for one call at N = 32768; once is enough.
        if (path.kernel == Kernel::Blocked && n > 4096 && threads > 1) continue;
        const std::string name = std::string("memory/") + path.name + "/N:" + std::to_string(n) +
                                 "/d:" + std::to_string(d) + "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), BM_attention_memory, path.kernel, n, d, threads)
            ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
      }
  for (Index n : {Index(4096), Index(32768)})
    for (Index head_dim : {Index(64), Index(128)})
      for (int threads : {1, 2}) {
        const std::string name = "memory/backward_simd/N:" + std::to_string(n) + "/d:" + std::to_string(head_dim) +
                                 "/threads:" + std::to_string(threads);
        benchmark::RegisterBenchmark(name.c_str(), BM_backward_memory, n, head_dim, threads)
            ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
      }
}


}  // namespace

int main(int argc, char** argv) {
  return sdpa_bench::run_benchmarks(
      argc, argv, register_all,
      {{"method", "fork per measurement; VmHWM - VmRSS around one call after clear_refs=5"}});
}

