// benchmarks/bench_mpi.cpp - ring attention across MPI ranks against one process, side by side
// in one run (docs/distributed.md). Run under mpirun, one thread per rank:
//
//   OMP_NUM_THREADS=1 mpirun -np 2 --oversubscribe build/benchmarks/bench_mpi
//
// Registered per shape (batch 1, 8 heads, d = 64, causal):
//   mpi/one_process/N:n   rank 0 alone runs sdpa::attention over the whole sequence, one thread
//                         (the other ranks wait asleep): the 1-rank baseline
//   mpi/ring/N:n          every rank runs ring_attention on its zig-zag shard
// Counters: GFLOPS (the causal FLOPs, N (N + 1) / 2 pairs x 4 d x heads, over the wall time of
// the slowest rank); on the ring, compute_spread = (max - min) / max of the ranks' compute
// times (the zig-zag balance) and wait_fraction = the largest rank's time blocked on
// MPI_Waitall over the wall time, and slowest_rank the rank whose compute took longest. Only rank 0 reports; every rank runs the same fixed
// iterations, so the collectives inside always meet.
#include <sdpa/mpi.hpp>
#include <sdpa/sdpa.hpp>

#include <benchmark/benchmark.h>
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <thread>
#include <random>
#include <string>
#include <vector>

namespace {

constexpr sdpa::Index kHeads = 8, kDim = 64;

int rank() { return sdpa::mpi::detail::rank_of(MPI_COMM_WORLD); }
int ranks() { return sdpa::mpi::detail::size_of(MPI_COMM_WORLD); }

std::vector<float> random_floats(std::size_t count, unsigned seed) {
  std::mt19937 gen(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> x(count);
  for (float& e : x) e = dist(gen);
  return x;
}

double causal_flops(sdpa::Index n) { return double(n) * double(n + 1) / 2 * 4.0 * kDim * kHeads; }

sdpa::Options one_thread_causal() {
  sdpa::Options options;
  options.causal = true;
  options.threads = 1;
  return options;
}

/// A barrier that waits asleep: MPI_Barrier spins, and a rank spinning on the other core
/// slowed rank 0's one-process run by a third on this VM (4393 against 2948 ms at N = 16384).
void sleep_in_barrier() {
  MPI_Request request;
  MPI_Ibarrier(MPI_COMM_WORLD, &request);
  for (int done = 0; MPI_Test(&request, &done, MPI_STATUS_IGNORE), !done;)
    std::this_thread::sleep_for(std::chrono::microseconds(200));
}

void BM_one_process(benchmark::State& state, sdpa::Index n) {
  const std::size_t count = std::size_t(n * kHeads * kDim);
  const std::vector<float> q = random_floats(count, 1), k = random_floats(count, 2), v = random_floats(count, 3);
  std::vector<float> out(count);
  const auto view = [&](const std::vector<float>& x) { return sdpa::TensorView<const float>::bnhd(x.data(), 1, n, kHeads, kDim); };
  for (auto _ : state) {
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    if (rank() == 0)
      sdpa::attention(view(q), view(k), view(v), sdpa::TensorView<float>::bnhd(out.data(), 1, n, kHeads, kDim),
                      one_thread_causal());
    sleep_in_barrier();
    state.SetIterationTime(MPI_Wtime() - start);
  }
  state.counters["GFLOPS"] = benchmark::Counter(causal_flops(n) * double(state.iterations()) / 1e9,
                                                benchmark::Counter::kIsRate);
}

void BM_ring(benchmark::State& state, sdpa::Index n) {
  const auto shard = sdpa::mpi::zigzag_shard(n, ranks(), rank());
  sdpa::Index local = 0;
  for (const auto& range : shard) local += range.size();
  const std::size_t count = std::size_t(local * kHeads * kDim);
  const std::vector<float> q = random_floats(count, 10 + unsigned(rank())), k = random_floats(count, 20 + unsigned(rank())),
                           v = random_floats(count, 30 + unsigned(rank()));
  std::vector<float> out(count);
  const auto view = [&](const std::vector<float>& x) {
    return sdpa::TensorView<const float>::bnhd(x.data(), 1, local, kHeads, kDim);
  };
  double spread = 0, wait_fraction = 0;
  int slowest_rank = 0;
  for (auto _ : state) {
    sdpa::mpi::RingStats stats;
    MPI_Barrier(MPI_COMM_WORLD);
    const double start = MPI_Wtime();
    sdpa::mpi::ring_attention(MPI_COMM_WORLD, view(q), view(k), view(v),
                              sdpa::TensorView<float>::bnhd(out.data(), 1, local, kHeads, kDim), shard,
                              one_thread_causal(), &stats);
    MPI_Barrier(MPI_COMM_WORLD);
    const double wall = MPI_Wtime() - start;
    state.SetIterationTime(wall);
    struct {
      double seconds;
      int rank;
    } mine{stats.compute_seconds, rank()}, slowest, fastest{-stats.compute_seconds, rank()};
    MPI_Allreduce(&mine, &slowest, 1, MPI_DOUBLE_INT, MPI_MAXLOC, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, &fastest, 1, MPI_DOUBLE_INT, MPI_MAXLOC, MPI_COMM_WORLD);
    double wait = 0;
    MPI_Allreduce(&stats.wait_seconds, &wait, 1, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    spread = std::max(spread, (slowest.seconds + fastest.seconds) / slowest.seconds);
    slowest_rank = slowest.rank;
    wait_fraction = std::max(wait_fraction, wait / wall);
  }
  state.counters["GFLOPS"] = benchmark::Counter(causal_flops(n) * double(state.iterations()) / 1e9,
                                                benchmark::Counter::kIsRate);
  state.counters["compute_spread"] = spread;
  state.counters["wait_fraction"] = wait_fraction;
  state.counters["ranks"] = ranks();
  state.counters["slowest_rank"] = slowest_rank;
}

/// Reports nothing: the ranks other than 0 run the same benchmarks silently.
class Silent : public benchmark::BenchmarkReporter {
 public:
  bool ReportContext(const Context&) override { return true; }
  void ReportRuns(const std::vector<Run>&) override {}
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  for (const sdpa::Index n : {sdpa::Index(4096), sdpa::Index(16384)}) {
    const std::string shape = "N:" + std::to_string(n);
    benchmark::RegisterBenchmark(("mpi/one_process/" + shape).c_str(), BM_one_process, n)
        ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
    benchmark::RegisterBenchmark(("mpi/ring/" + shape).c_str(), BM_ring, n)
        ->Iterations(1)->UseManualTime()->Unit(benchmark::kMillisecond);
  }
  // Rank 0 alone writes --benchmark_out: the others' copies would overwrite its file.
  std::vector<char*> args(argv, argv + argc);
  if (rank() != 0)
    args.erase(std::remove_if(args.begin() + 1, args.end(),
                              [](const char* a) { return std::string(a).rfind("--benchmark_out", 0) == 0; }),
               args.end());
  int count = int(args.size());
  benchmark::Initialize(&count, args.data());
  benchmark::AddCustomContext("ranks", std::to_string(ranks()));
  benchmark::AddCustomContext("isa", sdpa::isa_name(sdpa::isa()));
  if (rank() == 0) {
    benchmark::RunSpecifiedBenchmarks();
  } else {
    Silent silent;
    benchmark::RunSpecifiedBenchmarks(&silent);
  }
  benchmark::Shutdown();
  MPI_Finalize();
}
