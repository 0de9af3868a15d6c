// bench_batched.cpp - the batched API (sdpa::attention on 4-D TensorViews): layouts, decoding
// against a KV cache, and grouped-query heads, beside the machine's memory bandwidth.
//
// Every figure here is meant to be read as a ratio against a baseline measured in the same
// run (docs/design.md, "Performance model": the machines are shared and noisy). Registered side by side:
//
//   stream/read/threads:T                                  sum of a 512 MiB array: the read-bandwidth ceiling
//   stream/triad/threads:T                                 a = b + s c over 3 x 128 MiB (STREAM's triad)
//   batched/layout:L/B:4/H:8/N:1024/d:64/causal:c/threads:T
//       prefill, Kernel::Simd; L = bhnd ([B, H, N, d] memory) or bnhd ([B, N, H, d]: every
//       token row of a head is H d floats after the previous one, read in place). Same
//       buffers, same values, only the strides differ: bnhd / bhnd is the cost of the layout.
//   decode/batched/heads:8/n:n/d:64/threads:T              one query row per head against a KV
//       cache of n tokens, all 8 heads in one sdpa::attention call (q [1, 8, 1, 64], k and v
//       [1, 8, n, 64])
//   decode/per_head/heads:8/n:n/d:64/threads:T             the same work as 8 calls of one head
//       each (q [1, 1, 1, 64], k and v [1, 1, n, 64]): a baseline for the batched call
//   decode_cache/C/heads:8/n:n/d:64/threads:T              decode/batched with the cache stored as
//       C = f32, bf16, f16 or q8_0 (int8 blocks; float queries and output): what fewer bytes buy
//   gqa/kv_heads:K/q_heads:32/prefill/N:1024/d:64/causal:c/threads:T
//   gqa/kv_heads:K/q_heads:32/decode/n:8192/d:64/threads:T
//       32 query heads sharing K = 2, 4 or 8 key/value heads (grouped-query, groups of 16, 8
//       and 4) or K = 32 (multi-head); decoding reads each kv head once, so time falls with K
//
// Counters:
//   GFLOPS        prefill: 4 N^2 d per head (causal: 4 d N (N + 1) / 2, the unmasked pairs)
//   GB/s          decode and stream: bytes of K and V a decode step must read (2 n d
//                 sizeof(element) per key/value head), and the bytes the stream kernels read or write; divide
//                 decode's by stream/read's at the same thread count for the fraction of the
//                 machine's read bandwidth that decoding reaches
//   tokens_per_s  decode: iterations per second, one iteration = one decoded token, all heads
//
// Memory. Fresh pages cost ~12 us per 4 KiB to first-touch here, so every buffer is allocated
// and filled once, outside the timed loops (lazily: a filtered run only pays for what it
// uses), and shared by all the benchmarks that need it. A decode step reads the whole K/V
// cache once and does ~2 FLOPs per byte: it is bound by memory bandwidth only if the cache
// comes from DRAM. One 8-head cache of n tokens is 4 KiB * n (4 MiB at n = 1024, 128 MiB at
// 32768) against a 32 MiB L3, so a loop over the same cache would measure L3 hits for small n.
// Instead a 256 MiB pool (8 x the L3) holds as many independent caches of the current shape
// as fit, at least 2, and each iteration decodes against the next one in turn: 64 sequences
// of 1024 tokens, ..., 2 of 32768. Every cache is evicted by the 7 x L3 read after it before
// it is read again, so each iteration reads its K and V from DRAM whatever n is.
//
// All times are wall-clock (UseRealTime: the OpenMP paths run on several threads), which
// appends "/real_time" to every name. Default --benchmark_min_time (0.5 s): one pass over
// everything takes about 50 s here. For medians of repetitions interleaved in random order
// (so that each ratio compares runs made under the same conditions), about 3.5 minutes:
//
//   bench_batched --benchmark_repetitions=5 --benchmark_enable_random_interleaving=true
//                 --benchmark_out=bench_batched.json --benchmark_out_format=json   (one line)
//   bench_batched --benchmark_filter='stream/read|decode/batched' --benchmark_min_time=0.1
#include <sdpa/config.hpp>
#include <sdpa/sdpa.hpp>

#include "context.hpp"
#include <sdpa/version.hpp>

#include <benchmark/benchmark.h>

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

namespace {

using sdpa::Index;
using ConstView = sdpa::TensorView<const float>;
using View = sdpa::TensorView<float>;
using sdpa_bench::NativeVec;

constexpr std::size_t kMiB = std::size_t(1) << 20;
const std::vector<int> kThreads = {1, 2};  // the machine has 2 cores

// ---------------------------------------------------------------------------------------
// Buffers: page-aligned, filled (first-touched) in parallel at allocation.

struct FreeDeleter {
  template <class T>
  void operator()(T* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<float[], FreeDeleter>;

/// A deterministic value in [-1, 1) for element i (parallel-friendly: no shared RNG state).
float hash_value(std::uint64_t i) {
  i = (i ^ (i >> 31)) * 0x7fb5d329728ea185ULL;
  i = (i ^ (i >> 27)) * 0x81dadef4bc2dd44dULL;
  i ^= i >> 33;
  return float(i >> 40) * (2.0f / float(1 << 24)) - 1.0f;
}

Buffer allocate(std::size_t count, std::uint64_t seed) {
  const std::size_t bytes = (count * sizeof(float) + 4095) / 4096 * 4096;
  float* p = static_cast<float*>(std::aligned_alloc(4096, bytes));
  if (!p) throw std::bad_alloc();
  const std::int64_t n = std::int64_t(count);
#if SDPA_HAS_OPENMP
#pragma omp parallel for schedule(static) num_threads(2)
#endif
  for (std::int64_t i = 0; i < n; ++i) p[i] = hash_value(seed * 0x9e3779b97f4a7c15ULL + std::uint64_t(i));
  return Buffer(p);
}

void set_gflops(benchmark::State& state, double flops_per_iteration) {
  state.counters["GFLOPS"] =
      benchmark::Counter(flops_per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void set_bandwidth(benchmark::State& state, double bytes_per_iteration) {
  state.counters["GB/s"] =
      benchmark::Counter(bytes_per_iteration, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
}
void set_tokens(benchmark::State& state) {
  state.counters["tokens_per_s"] = benchmark::Counter(1, benchmark::Counter::kIsIterationInvariantRate);
}

sdpa::Options options_for(bool causal, int threads) {
  sdpa::Options options;
  options.kernel = sdpa::Kernel::Simd;
  options.causal = causal;
  options.threads = threads;
  return options;
}

// ---------------------------------------------------------------------------------------
// (1) STREAM-like ceilings. Each thread takes a contiguous part (its half at 2 threads).
// Measured here: ~38-41 GB/s on one core; at 2 threads the figure is bimodal from one 0.5 s
// repetition to the next within a run (~43 or ~75 GB/s, with no other process running: the
// VM's share of the memory system varies), so quote the median of repetitions with its spread.

constexpr std::size_t kStreamReadBytes = 512 * kMiB;   // 16 x the L3
constexpr std::size_t kStreamTriadBytes = 128 * kMiB;  // per array, 3 arrays
constexpr int kAccumulators = 8;                       // 8 independent add chains: 2 adds/cycle x 4 cycles
constexpr Index kBlock = kAccumulators * NativeVec::width;

/// [first, end) of thread t of `threads` over `count` elements, in whole blocks.
std::pair<Index, Index> thread_part(Index count, int t, int threads) {
  const Index blocks = count / kBlock;
  return {blocks * t / threads * kBlock, blocks * (t + 1) / threads * kBlock};
}

NativeVec sum_range(const float* p, Index first, Index end) {
  NativeVec acc[kAccumulators];
  for (int c = 0; c < kAccumulators; ++c) acc[c] = NativeVec::zero();
  for (Index i = first; i < end; i += kBlock) {
#pragma GCC unroll 8
    for (int c = 0; c < kAccumulators; ++c) acc[c] = acc[c] + NativeVec::load(p + i + c * NativeVec::width);
  }
  for (int c = 1; c < kAccumulators; ++c) acc[0] = acc[0] + acc[c];
  return acc[0];
}

void triad_range(float* a, const float* b, const float* c, float s, Index first, Index end) {
  const NativeVec scalar = NativeVec::broadcast(s);
  for (Index i = first; i < end; i += NativeVec::width)
    fma(scalar, NativeVec::load(c + i), NativeVec::load(b + i)).store(a + i);
}

struct StreamArrays {
  Index read_count = Index(kStreamReadBytes / sizeof(float));
  Index triad_count = Index(kStreamTriadBytes / sizeof(float));
  Buffer read, a, b, c;
  static StreamArrays& get_read() {
    static StreamArrays s;
    if (!s.read) s.read = allocate(std::size_t(s.read_count), 1);
    return s;
  }
  static StreamArrays& get_triad() {
    StreamArrays& s = get_read();
    if (!s.a) {
      s.a = allocate(std::size_t(s.triad_count), 2);
      s.b = allocate(std::size_t(s.triad_count), 3);
      s.c = allocate(std::size_t(s.triad_count), 4);
    }
    return s;
  }
};

/// Runs body(first, end) on `threads` threads, each on its own contiguous part of [0, count).
template <class Body>
void on_each_thread(int threads, Index count, const Body& body) {
#if SDPA_HAS_OPENMP
#pragma omp parallel num_threads(threads)
  {
    const auto [first, end] = thread_part(count, omp_get_thread_num(), omp_get_num_threads());
    body(first, end);
  }
#else
  (void)threads;
  const auto [first, end] = thread_part(count, 0, 1);
  body(first, end);
#endif
}

void BM_stream_read(benchmark::State& state, int threads) {
  StreamArrays& s = StreamArrays::get_read();
  const float* p = s.read.get();
  const Index count = s.read_count;
  for (auto _ : state) {
    on_each_thread(threads, count, [&](Index first, Index end) {
      NativeVec sum = sum_range(p, first, end);
      benchmark::DoNotOptimize(sum);
    });
  }
  set_bandwidth(state, double(kStreamReadBytes));
}

void BM_stream_triad(benchmark::State& state, int threads) {
  StreamArrays& s = StreamArrays::get_triad();
  float* a = s.a.get();
  const float* b = s.b.get();
  const float* c = s.c.get();
  const Index count = s.triad_count;
  float scalar = 0.5f;
  for (auto _ : state) {
    benchmark::DoNotOptimize(scalar);
    on_each_thread(threads, count, [&](Index first, Index end) { triad_range(a, b, c, scalar, first, end); });
    benchmark::ClobberMemory();
  }
  // STREAM's convention: 3 arrays moved; the write-allocate read of `a` is not counted.
  set_bandwidth(state, 3.0 * double(kStreamTriadBytes));
}

// ---------------------------------------------------------------------------------------
// (2) Prefill over a batch, in both layouts, and grouped-query prefill: one set of buffers of
// B H N d = 4 x 8 x 1024 x 64 = 2^21 floats (8 MiB) each for Q, K, V and the output. The
// bnhd views read the same memory with other strides; the GQA views (B = 1, 32 query heads)
// use all of Q and the first K heads' worth of K and V.

constexpr Index kBatch = 4, kHeads = 8, kPrefillN = 1024, kHeadDim = 64;
constexpr Index kGqaQueryHeads = 32;  // = kBatch * kHeads: the same buffers serve both

struct PrefillBuffers {
  static constexpr std::size_t count = std::size_t(kBatch * kHeads * kPrefillN * kHeadDim);
  Buffer q, k, v, out;
  static PrefillBuffers& get() {
    static PrefillBuffers b;
    if (!b.q) {
      b.q = allocate(count, 11);
      b.k = allocate(count, 12);
      b.v = allocate(count, 13);
      b.out = allocate(count, 14);
    }
    return b;
  }
};

double attention_flops(Index nq, Index nk, Index d, bool causal, Index heads) {
  const double pairs = causal ? double(nq) * double(nq + 1) / 2.0 : double(nq) * double(nk);  // causal: nq == nk
  return 4.0 * pairs * double(d) * double(heads);
}

void BM_batched_prefill(benchmark::State& state, bool bnhd, bool causal, int threads) {
  PrefillBuffers& buf = PrefillBuffers::get();
  const Index B = kBatch, H = kHeads, N = kPrefillN, d = kHeadDim;
  const auto in = [&](const Buffer& b) {
    return bnhd ? ConstView::bnhd(b.get(), B, N, H, d) : ConstView::bhnd(b.get(), B, H, N, d);
  };
  const ConstView q = in(buf.q), k = in(buf.k), v = in(buf.v);
  const View out = bnhd ? View::bnhd(buf.out.get(), B, N, H, d) : View::bhnd(buf.out.get(), B, H, N, d);
  const sdpa::Options options = options_for(causal, threads);
  sdpa::attention(q, k, v, out, options);  // untimed: grows the scratch (packed K, tiles) to this shape
  for (auto _ : state) {
    sdpa::attention(q, k, v, out, options);
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(N, N, d, causal, B * H));
}

void BM_gqa_prefill(benchmark::State& state, Index kv_heads, bool causal, int threads) {
  PrefillBuffers& buf = PrefillBuffers::get();
  const Index H = kGqaQueryHeads, N = kPrefillN, d = kHeadDim;
  const ConstView q = ConstView::bhnd(buf.q.get(), 1, H, N, d);
  const ConstView k = ConstView::bhnd(buf.k.get(), 1, kv_heads, N, d);
  const ConstView v = ConstView::bhnd(buf.v.get(), 1, kv_heads, N, d);
  const View out = View::bhnd(buf.out.get(), 1, H, N, d);
  const sdpa::Options options = options_for(causal, threads);
  sdpa::attention(q, k, v, out, options);
  for (auto _ : state) {
    sdpa::attention(q, k, v, out, options);
    benchmark::ClobberMemory();
  }
  set_gflops(state, attention_flops(N, N, d, causal, H));
}

// ---------------------------------------------------------------------------------------
// (3) Decode: one query row per query head against a KV cache of n tokens per key/value
// head. The caches live in one 256 MiB pool (see the header: 8 x the L3), cut into as many
// caches of the current shape as fit; cache c is K then V, each [1, kv_heads, n, d] (bhnd).

constexpr std::size_t kDecodePoolBytes = 256 * kMiB;
const std::vector<Index> kDecodeTokens = {1024, 2048, 4096, 8192, 16384, 32768};
constexpr Index kGqaDecodeTokens = 8192;

/// The pool of caches of element type S (float, Eigen::bfloat16, Eigen::half), allocated and
/// filled on first use: the same bytes for every type, so the same eviction whatever S.
template <class S>
const S* decode_pool() {
  static const std::unique_ptr<S[], FreeDeleter> pool = [] {
    const std::size_t count = kDecodePoolBytes / sizeof(S);
    S* p = static_cast<S*>(std::aligned_alloc(4096, kDecodePoolBytes));
    if (!p) throw std::bad_alloc();
    const std::int64_t n = std::int64_t(count);
#if SDPA_HAS_OPENMP
#pragma omp parallel for schedule(static) num_threads(2)
#endif
    for (std::int64_t i = 0; i < n; ++i) {
      const std::uint64_t seed = 21 * 0x9e3779b97f4a7c15ULL + std::uint64_t(i);
      if constexpr (sdpa::is_quantized<S>) {  // values in [-1, 1): scale 1/127, q in [-127, 127]
        p[i].scale = Eigen::half(1.0f / 127.0f);
        for (int c = 0; c < sdpa::BlockQ8_0::size; ++c)
          p[i].q[c] = std::int8_t(std::nearbyint(127.0f * hash_value(seed * 64 + std::uint64_t(c))));
      } else {
        p[i] = S(hash_value(seed));
      }
    }
    return std::unique_ptr<S[], FreeDeleter>(p);
  }();
  return pool.get();
}

struct DecodeRows {
  Buffer q, out;  // one row per query head, at most kGqaQueryHeads
  static DecodeRows& get() {
    static DecodeRows p;
    if (!p.q) {
      p.q = allocate(std::size_t(kGqaQueryHeads * kHeadDim), 22);
      p.out = allocate(std::size_t(kGqaQueryHeads * kHeadDim), 23);
    }
    return p;
  }
};

template <class S>
struct DecodeCaches {
  using View = sdpa::TensorView<const S>;
  Index kv_heads, n, d, elements_per_tensor, copies;
  const S* pool;
  DecodeCaches(Index kv_heads_, Index n_, Index d_)
      : kv_heads(kv_heads_), n(n_), d(d_ / sdpa::features_per_element<S>), elements_per_tensor(kv_heads_ * n_ * d),
        pool(decode_pool<S>()) {
    copies = Index(kDecodePoolBytes) / Index(bytes_per_step());
    if (copies < 2) std::abort();  // the pool is sized for 2 copies of the largest shape
  }
  View k(Index copy) const { return View::bhnd(pool + 2 * copy * elements_per_tensor, 1, kv_heads, n, d); }
  View v(Index copy) const { return View::bhnd(pool + (2 * copy + 1) * elements_per_tensor, 1, kv_heads, n, d); }
  double bytes_per_step() const { return 2.0 * double(elements_per_tensor) * sizeof(S); }
};

/// `per_head`: one call per query head with 1-head views instead of one call for all. S: the
/// cache's element type; queries and outputs are float.
template <class S = float>
void BM_decode(benchmark::State& state, Index q_heads, Index kv_heads, Index n, bool per_head, int threads) {
  DecodeRows& p = DecodeRows::get();
  using CacheView = sdpa::TensorView<const S>;
  const Index d = kHeadDim, group = q_heads / kv_heads;
  const DecodeCaches<S> caches(kv_heads, n, d);
  const ConstView q = ConstView::bhnd(p.q.get(), 1, q_heads, 1, d);
  const View out = View::bhnd(p.out.get(), 1, q_heads, 1, d);
  const sdpa::Options options = options_for(false, threads);
  const auto step = [&](Index copy) {
    const CacheView k = caches.k(copy), v = caches.v(copy);
    if (!per_head) return sdpa::attention(q, k, v, out, options);
    for (Index h = 0; h < q_heads; ++h)
      sdpa::attention(ConstView::bhnd(p.q.get() + h * d, 1, 1, 1, d),
                      CacheView::bhnd(k.head(0, h / group).data, 1, 1, n, d),
                      CacheView::bhnd(v.head(0, h / group).data, 1, 1, n, d),
                      View::bhnd(p.out.get() + h * d, 1, 1, 1, d), options);
  };
  step(0);  // untimed: grows the scratch to this shape
  state.counters["caches"] = double(caches.copies);
  Index copy = 0;
  for (auto _ : state) {
    copy = copy + 1 == caches.copies ? 0 : copy + 1;
    step(copy);
    benchmark::ClobberMemory();
  }
  set_bandwidth(state, caches.bytes_per_step());
  set_tokens(state);
}

// ---------------------------------------------------------------------------------------
// The grid: baselines first (stream), then each group's variants next to each other.

std::string t_suffix(int threads) { return "/threads:" + std::to_string(threads); }

void register_all() {
  for (int threads : kThreads)
    benchmark::RegisterBenchmark(("stream/read" + t_suffix(threads)).c_str(), BM_stream_read, threads)->UseRealTime();
  for (int threads : kThreads)
    benchmark::RegisterBenchmark(("stream/triad" + t_suffix(threads)).c_str(), BM_stream_triad, threads)
        ->UseRealTime();

  const std::string prefill_shape = "B:" + std::to_string(kBatch) + "/H:" + std::to_string(kHeads) +
                                    "/N:" + std::to_string(kPrefillN) + "/d:" + std::to_string(kHeadDim);
  for (bool causal : {false, true})
    for (int threads : kThreads)
      for (bool bnhd : {false, true})
        benchmark::RegisterBenchmark((std::string("batched/layout:") + (bnhd ? "bnhd/" : "bhnd/") + prefill_shape +
                                      "/causal:" + std::to_string(int(causal)) + t_suffix(threads))
                                         .c_str(),
                                     BM_batched_prefill, bnhd, causal, threads)
            ->UseRealTime();

  for (Index n : kDecodeTokens)
    for (int threads : kThreads)
      for (bool per_head : {false, true})
        benchmark::RegisterBenchmark((std::string("decode/") + (per_head ? "per_head" : "batched") + "/heads:" +
                                      std::to_string(kHeads) + "/n:" + std::to_string(n) + "/d:" +
                                      std::to_string(kHeadDim) + t_suffix(threads))
                                         .c_str(),
                                     BM_decode<float>, kHeads, kHeads, n, per_head, threads)
            ->UseRealTime();

  for (Index n : {Index(8192), Index(32768)})
    for (int threads : kThreads) {
      const std::string shape = "/heads:" + std::to_string(kHeads) + "/n:" + std::to_string(n) + "/d:" +
                                std::to_string(kHeadDim) + t_suffix(threads);
      benchmark::RegisterBenchmark(("decode_cache/f32" + shape).c_str(), BM_decode<float>, kHeads, kHeads, n, false,
                                   threads)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("decode_cache/bf16" + shape).c_str(), BM_decode<Eigen::bfloat16>, kHeads, kHeads,
                                   n, false, threads)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("decode_cache/f16" + shape).c_str(), BM_decode<Eigen::half>, kHeads, kHeads, n,
                                   false, threads)
          ->UseRealTime();
      benchmark::RegisterBenchmark(("decode_cache/q8_0" + shape).c_str(), BM_decode<sdpa::BlockQ8_0>, kHeads, kHeads,
                                   n, false, threads)
          ->UseRealTime();
    }

  const std::string q_heads = "/q_heads:" + std::to_string(kGqaQueryHeads);
  for (bool causal : {false, true})
    for (int threads : kThreads)
      for (Index kv_heads : {Index(8), kGqaQueryHeads})
        benchmark::RegisterBenchmark(("gqa/kv_heads:" + std::to_string(kv_heads) + q_heads + "/prefill/N:" +
                                      std::to_string(kPrefillN) + "/d:" + std::to_string(kHeadDim) + "/causal:" +
                                      std::to_string(int(causal)) + t_suffix(threads))
                                         .c_str(),
                                     BM_gqa_prefill, kv_heads, causal, threads)
            ->UseRealTime();
  for (int threads : kThreads)
    for (Index kv_heads : {Index(2), Index(4), Index(8), kGqaQueryHeads})
      benchmark::RegisterBenchmark(("gqa/kv_heads:" + std::to_string(kv_heads) + q_heads + "/decode/n:" +
                                    std::to_string(kGqaDecodeTokens) + "/d:" + std::to_string(kHeadDim) +
                                    t_suffix(threads))
                                       .c_str(),
                                   BM_decode<float>, kGqaQueryHeads, kv_heads, kGqaDecodeTokens, false, threads)
          ->UseRealTime();
}

// ---------------------------------------------------------------------------------------
// Context: a check that the variants compared compute the same thing, on small shapes.

float max_diff(const std::vector<float>& a, const std::vector<float>& b) {
  float worst = 0;
  for (std::size_t i = 0; i < a.size(); ++i) worst = std::max(worst, std::abs(a[i] - b[i]));
  return worst;
}

std::string self_check() {
  const Index B = 2, H = 4, N = 100, d = kHeadDim, kv = 2, group = H / kv;
  const auto fill = [](std::size_t count, std::uint64_t seed) {
    std::vector<float> x(count);
    for (std::size_t i = 0; i < count; ++i) x[i] = hash_value(seed * 0x9e3779b97f4a7c15ULL + i);
    return x;
  };
  const std::size_t count = std::size_t(B * H * N * d);
  const std::vector<float> q = fill(count, 1), k = fill(count, 2), v = fill(count, 3);
  const sdpa::Options options = options_for(true, 2);

  // bnhd vs bhnd: the same tensors transposed in memory.
  const auto to_bnhd = [&](const std::vector<float>& x) {
    std::vector<float> y(x.size());
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h)
        for (Index n = 0; n < N; ++n)
          std::copy_n(&x[std::size_t(((b * H + h) * N + n) * d)], d, &y[std::size_t(((b * N + n) * H + h) * d)]);
    return y;
  };
  std::vector<float> out_bhnd(count), out_bnhd(count);
  sdpa::attention(ConstView::bhnd(q.data(), B, H, N, d), ConstView::bhnd(k.data(), B, H, N, d),
                  ConstView::bhnd(v.data(), B, H, N, d), View::bhnd(out_bhnd.data(), B, H, N, d), options);
  const std::vector<float> qt = to_bnhd(q), kt = to_bnhd(k), vt = to_bnhd(v);
  sdpa::attention(ConstView::bnhd(qt.data(), B, N, H, d), ConstView::bnhd(kt.data(), B, N, H, d),
                  ConstView::bnhd(vt.data(), B, N, H, d), View::bnhd(out_bnhd.data(), B, N, H, d), options);
  const float layout_diff = max_diff(to_bnhd(out_bhnd), out_bnhd);

  // GQA (kv = 2 heads) vs MHA on the kv heads repeated (each H / kv times).
  std::vector<float> k_rep(count), v_rep(count), out_gqa(count), out_mha(count);
  for (Index b = 0; b < B; ++b)
    for (Index h = 0; h < H; ++h) {
      const std::size_t from = std::size_t((b * kv + h / group) * N * d), to = std::size_t((b * H + h) * N * d);
      std::copy_n(&k[from], N * d, &k_rep[to]);
      std::copy_n(&v[from], N * d, &v_rep[to]);
    }
  sdpa::attention(ConstView::bhnd(q.data(), B, H, N, d), ConstView::bhnd(k.data(), B, kv, N, d),
                  ConstView::bhnd(v.data(), B, kv, N, d), View::bhnd(out_gqa.data(), B, H, N, d), options);
  sdpa::attention(ConstView::bhnd(q.data(), B, H, N, d), ConstView::bhnd(k_rep.data(), B, H, N, d),
                  ConstView::bhnd(v_rep.data(), B, H, N, d), View::bhnd(out_mha.data(), B, H, N, d), options);
  const float gqa_diff = max_diff(out_gqa, out_mha);

  // Decode: all heads in one call vs one call per head (the split-key path), n = 2000 keys.
  const Index n = 2000, heads = 8;
  const std::vector<float> kd = fill(std::size_t(heads * n * d), 4), vd = fill(std::size_t(heads * n * d), 5);
  std::vector<float> out_all(std::size_t(heads * d)), out_each(std::size_t(heads * d));
  sdpa::attention(ConstView::bhnd(q.data(), 1, heads, 1, d), ConstView::bhnd(kd.data(), 1, heads, n, d),
                  ConstView::bhnd(vd.data(), 1, heads, n, d), View::bhnd(out_all.data(), 1, heads, 1, d), options);
  for (Index h = 0; h < heads; ++h)
    sdpa::attention(ConstView::bhnd(q.data() + h * d, 1, 1, 1, d), ConstView::bhnd(kd.data() + h * n * d, 1, 1, n, d),
                    ConstView::bhnd(vd.data() + h * n * d, 1, 1, n, d),
                    View::bhnd(out_each.data() + h * d, 1, 1, 1, d), options);
  const float decode_diff = max_diff(out_all, out_each);

  char text[256];
  std::snprintf(text, sizeof text, "%s: max |bnhd - bhnd| %.1e, |gqa - mha repeated| %.1e, |batched - per_head| %.1e",
                std::max({layout_diff, gqa_diff, decode_diff}) < 1e-5f ? "ok" : "MISMATCH", double(layout_diff),
                double(gqa_diff), double(decode_diff));
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

  sdpa_bench::add_build_context();
  benchmark::AddCustomContext("decode_pool_MiB", std::to_string(kDecodePoolBytes / kMiB));
  benchmark::AddCustomContext("stream_read_MiB", std::to_string(kStreamReadBytes / kMiB));
  benchmark::AddCustomContext("self_check", self_check());

  register_all();
  benchmark::RunSpecifiedBenchmarks();
  benchmark::Shutdown();
  return 0;
}
