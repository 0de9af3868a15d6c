// Calls from many threads at once, on shared read-only inputs, each with its own outputs: every
// thread gets the single-threaded result, bit for bit (what a server answering many requests
// with one model relies on: no hidden shared state, scratch memory per thread). And a user
// Options::parallel_for built on std::threads gives the serial result, bit for bit.
// Under ThreadSanitizer (the "tsan" preset: OpenMP off, so all parallel work here comes from
// std::threads) any data race inside sdpa is a report.
//
// Catch2's assertions are not thread-safe: the threads only compute; the main thread checks.
#include "catch.hpp"
#include "support.hpp"

#include <atomic>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

namespace test_concurrency {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;
using sdpa::TensorView;

namespace {

constexpr int kCallers = 4;  // threads calling sdpa at once
constexpr int kRepeats = 3;  // calls per thread: the second and third reuse the thread's scratch

/// Runs caller(t) for t in [0, kCallers) on that many std::threads, released together so that
/// their calls overlap, and joins them.
void run_concurrently(const std::function<void(int)>& caller) {
  std::atomic<bool> go{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < kCallers; ++t)
    threads.emplace_back([&go, &caller, t] {
      while (!go.load()) std::this_thread::yield();
      caller(t);
    });
  go = true;
  for (std::thread& thread : threads) thread.join();
}

/// A user thread pool: [0, count) in `pieces` contiguous chunks, each run on its own
/// std::thread, all joined before returning (Options::parallel_for's contract).
sdpa::ParallelFor std_thread_pool(int pieces) {
  return [pieces](Index count, const std::function<void(Index, Index)>& body) {
    std::vector<std::thread> threads;
    const Index chunk = (count + pieces - 1) / pieces;
    for (Index begin = 0; begin < count; begin += chunk)
      threads.emplace_back([&body, begin, end = std::min(count, begin + chunk)] { body(begin, end); });
    for (std::thread& thread : threads) thread.join();
  };
}

template <class T>
bool same_bits(const Matrix<T>& a, const Matrix<T>& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         std::memcmp(a.data(), b.data(), std::size_t(a.size()) * sizeof(T)) == 0;
}
template <class T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(T)) == 0;
}

/// Every caller's every result equals `serial`.
template <class Result>
void check_all_equal(const std::vector<std::vector<Result>>& results, const Result& serial, const std::string& what) {
  for (int t = 0; t < kCallers; ++t)
    for (int r = 0; r < kRepeats; ++r) {
      INFO(what << ": caller " << t << ", call " << r);
      CHECK(same_bits(results[std::size_t(t)][std::size_t(r)], serial));
    }
}

/// Shared masks for the 2-D calls: a boolean mask and a bias, read by every thread at once.
struct SharedMasks {
  Matrix<bool> allowed;
  Matrix<float> bias;
  SharedMasks(Index nq, Index nk, std::mt19937_64& gen) : allowed(nq, nk), bias(random_matrix<float>(1, nk, gen)) {
    std::bernoulli_distribution coin(0.85);
    for (Index i = 0; i < allowed.size(); ++i) allowed.data()[i] = coin(gen);
  }
  sdpa::Options options(sdpa::Kernel kernel) const {
    sdpa::Options o;
    o.kernel = kernel;
    o.causal = true;
    o.mask = allowed;
    o.bias = bias;
    return o;
  }
};

/// [B, N, H, d] storage of random values and its view.
struct Tensor {
  std::vector<float> data;
  TensorView<float> view;
  Tensor(Index b, Index h, Index n, Index d, std::mt19937_64& gen) : data(std::size_t(b * h * n * d)) {
    std::uniform_real_distribution<float> dist(-1.5f, 1.5f);
    for (float& x : data) x = dist(gen);
    view = TensorView<float>::bnhd(data.data(), b, n, h, d);
  }
};

}  // namespace

TEST_CASE("concurrent 2-D calls on shared inputs give the single-threaded result, bit for bit", "[concurrency]") {
  auto gen = rng(1);
  // A prefill shape (many query tiles) and a decode shape (one query, keys split in pieces).
  struct Shape {
    Index nq, nk, dk, dv;
  };
  for (const Shape& s : {Shape{70, 90, 32, 24}, Shape{1, 1100, 64, 64}}) {
    const Matrix<float> Q = random_matrix<float>(s.nq, s.dk, gen, -2, 2), K = random_matrix<float>(s.nk, s.dk, gen, -2, 2),
                        V = random_matrix<float>(s.nk, s.dv, gen);
    const SharedMasks masks(s.nq, s.nk, gen);
    for (const sdpa::Kernel kernel : all_kernels()) {
      const sdpa::Options options = masks.options(kernel);  // one Options object, shared too
      const Matrix<float> serial = sdpa::attention(Q, K, V, options);
      Matrix<float> serial_into(s.nq, s.dv);
      sdpa::Vector<float> serial_lse(s.nq);
      sdpa::attention_into(Q, K, V, serial_into, serial_lse, options);
      std::vector<std::vector<Matrix<float>>> results(kCallers), into(kCallers), lse(kCallers);
      run_concurrently([&](int t) {
        for (int r = 0; r < kRepeats; ++r) {
          results[std::size_t(t)].push_back(sdpa::attention(Q, K, V, options));
          Matrix<float> out(s.nq, s.dv);
          sdpa::Vector<float> l(s.nq);
          sdpa::attention_into(Q, K, V, out, l, options);
          into[std::size_t(t)].push_back(out);
          lse[std::size_t(t)].push_back(Matrix<float>(l.transpose()));
        }
      });
      const std::string what = std::string(name(kernel)) + " Nq=" + std::to_string(s.nq) + " Nk=" + std::to_string(s.nk);
      check_all_equal(results, serial, what + " attention");
      check_all_equal(into, serial_into, what + " attention_into");
      check_all_equal(lse, Matrix<float>(serial_lse.transpose()), what + " LSE");
    }
  }
  // Double (the Blocked and Reference paths of another type, another scratch).
  const Matrix<double> Q = random_matrix<double>(33, 16, gen), K = random_matrix<double>(47, 16, gen),
                       V = random_matrix<double>(47, 8, gen);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    const Matrix<double> serial = sdpa::attention(Q, K, V, options);
    std::vector<std::vector<Matrix<double>>> results(kCallers);
    run_concurrently([&](int t) {
      for (int r = 0; r < kRepeats; ++r) results[std::size_t(t)].push_back(sdpa::attention(Q, K, V, options));
    });
    check_all_equal(results, serial, std::string(name(kernel)) + " double");
  }
}

TEST_CASE("concurrent batched calls on shared tensors give the single-threaded result, bit for bit", "[concurrency]") {
  auto gen = rng(2);
  const Index B = 2, H = 4, Hkv = 2, N = 40, M = 45, d = 16;
  const Tensor q(B, H, N, d, gen), k(B, Hkv, M, d, gen), v(B, Hkv, M, d, gen);
  std::vector<char> mask_storage(std::size_t(H * M));  // [1, H, 1, M]: per head, every sequence and query
  std::bernoulli_distribution coin(0.8);
  for (char& m : mask_storage) m = coin(gen);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    options.causal = true;
    options.sequence_lengths = {45, 30};
    options.batch_mask = {reinterpret_cast<const bool*>(mask_storage.data()), 1, H, 1, M, 0, M, 0};
    const auto run = [&](std::vector<float>& out) {
      out.assign(std::size_t(B * H * N * d), 0.0f);
      sdpa::attention<float>(q.view, k.view, v.view, TensorView<float>::bnhd(out.data(), B, N, H, d), options);
    };
    std::vector<float> serial;
    run(serial);
    std::vector<std::vector<std::vector<float>>> results(kCallers);
    run_concurrently([&](int t) {
      for (int r = 0; r < kRepeats; ++r) {
        std::vector<float> out;
        run(out);
        results[std::size_t(t)].push_back(std::move(out));
      }
    });
    check_all_equal(results, serial, std::string(name(kernel)) + " batched");
  }
}

TEST_CASE("concurrent readers of one KV cache give the single-threaded result, bit for bit", "[concurrency]") {
  auto gen = rng(3);
  const Index batch = 2, kv_heads = 2, d = 16, capacity = 64;
  sdpa::KVCache<float> cache(batch, kv_heads, d, d, capacity);
  cache.append(0, random_matrix<float>(50, kv_heads * d, gen), random_matrix<float>(50, kv_heads * d, gen));
  cache.append(1, random_matrix<float>(37, kv_heads * d, gen), random_matrix<float>(37, kv_heads * d, gen));
  const Matrix<float> Q = random_matrix<float>(5, d, gen, -2, 2);
  const sdpa::KVCache<float>& shared = cache;  // readers see it const
  using Map = Eigen::Map<const Matrix<float>, 0, Eigen::OuterStride<>>;
  // Attention of Q against every (sequence, head) of the cache, read in place through its views.
  const auto read_all = [&](sdpa::Kernel kernel) {
    std::vector<float> all;
    sdpa::Options options;
    options.kernel = kernel;
    options.causal = true;
    for (Index s = 0; s < batch; ++s)
      for (Index h = 0; h < kv_heads; ++h) {
        const sdpa::MatrixView<const float> keys = shared.keys(s, h), values = shared.values(s, h);
        const Matrix<float> out =
            sdpa::attention(Q, Map(keys.data, keys.rows, keys.cols, Eigen::OuterStride<>(keys.row_stride)),
                            Map(values.data, values.rows, values.cols, Eigen::OuterStride<>(values.row_stride)), options);
        all.insert(all.end(), out.data(), out.data() + out.size());
        all.push_back(float(shared.length(s)));
      }
    return all;
  };
  for (const sdpa::Kernel kernel : all_kernels()) {
    const std::vector<float> serial = read_all(kernel);
    std::vector<std::vector<std::vector<float>>> results(kCallers);
    run_concurrently([&](int t) {
      for (int r = 0; r < kRepeats; ++r) results[std::size_t(t)].push_back(read_all(kernel));
    });
    check_all_equal(results, serial, std::string(name(kernel)) + " KV cache readers");
  }
}

TEST_CASE("one const layer serves concurrent forward and step calls, bit for bit", "[concurrency]") {
  auto gen = rng(4);
  const auto layer = sdpa::SelfAttention<float>::random(/*d_model=*/64, /*heads=*/8, /*seed=*/4, true, true, /*kv_heads=*/2);
  const Matrix<float> X = random_matrix<float>(30, 64, gen), memory = random_matrix<float>(17, 64, gen);
  sdpa::Options causal;
  causal.causal = true;
  // Generation: a prompt of 12 tokens, then one token per step, in the caller's own cache.
  const auto generate = [&] {
    sdpa::KVCache<float> cache(1, 2, 8, 8, 30);
    Matrix<float> out(30, 64);
    out.topRows(12) = layer.step(X.topRows(12), cache);
    for (Index t = 12; t < 30; ++t) out.row(t) = layer.step(X.row(t), cache);
    return out;
  };
  const Matrix<float> self = layer.forward(X, causal), cross = layer.forward(X, memory), stepped = generate();
  std::vector<std::vector<Matrix<float>>> self_results(kCallers), cross_results(kCallers), step_results(kCallers);
  run_concurrently([&](int t) {
    for (int r = 0; r < kRepeats; ++r) {
      self_results[std::size_t(t)].push_back(layer.forward(X, causal));
      cross_results[std::size_t(t)].push_back(layer.forward(X, memory));
      step_results[std::size_t(t)].push_back(generate());
    }
  });
  check_all_equal(self_results, self, "forward(X), causal");
  check_all_equal(cross_results, cross, "forward(X, memory)");
  check_all_equal(step_results, stepped, "step() on each caller's own cache");
}

TEST_CASE("a user parallel_for on std::threads gives the serial result, bit for bit", "[concurrency]") {
  auto gen = rng(5);
  sdpa::Options serial_options;
  serial_options.threads = 1;
  const auto with_pool = [](sdpa::Options o, int pieces) {
    o.parallel_for = std_thread_pool(pieces);
    return o;
  };
  // 2-D: many query tiles (prefill), and one query against keys split in pieces (decode).
  for (const Index nq : {Index(200), Index(1)}) {
    const Index nk = nq == 1 ? 1100 : 150;
    const Matrix<float> Q = random_matrix<float>(nq, 32, gen, -2, 2), K = random_matrix<float>(nk, 32, gen, -2, 2),
                        V = random_matrix<float>(nk, 32, gen);
    for (const sdpa::Kernel kernel : all_kernels()) {
      sdpa::Options options = serial_options;
      options.kernel = kernel;
      options.causal = nq > 1;
      const Matrix<float> serial = sdpa::attention(Q, K, V, options);
      for (const int pieces : {2, 3, 7}) {
        INFO(name(kernel) << " Nq=" << nq << ", " << pieces << " std::threads");
        CHECK(same_bits(sdpa::attention(Q, K, V, with_pool(options, pieces)), serial));
      }
      // Concurrent callers, each with its own pool: threads inside threads.
      std::vector<std::vector<Matrix<float>>> results(kCallers);
      run_concurrently([&](int t) {
        for (int r = 0; r < kRepeats; ++r) results[std::size_t(t)].push_back(sdpa::attention(Q, K, V, with_pool(options, 2)));
      });
      check_all_equal(results, serial, std::string(name(kernel)) + " callers with their own pools");
    }
  }
  // Batched: batch x heads x query tiles as one pool of work.
  const Index B = 2, H = 4, N = 64, d = 16;
  const Tensor q(B, H, N, d, gen), k(B, 2, N, d, gen), v(B, 2, N, d, gen);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options = serial_options;
    options.kernel = kernel;
    options.causal = true;
    const auto run = [&](const sdpa::Options& o) {
      std::vector<float> out(std::size_t(B * H * N * d));
      sdpa::attention<float>(q.view, k.view, v.view, TensorView<float>::bnhd(out.data(), B, N, H, d), o);
      return out;
    };
    const std::vector<float> serial = run(options);
    for (const int pieces : {2, 3}) {
      INFO(name(kernel) << " batched, " << pieces << " std::threads");
      CHECK(same_bits(run(with_pool(options, pieces)), serial));
    }
  }
  // A layer: every head's attention on the pool.
  const auto layer = sdpa::SelfAttention<float>::random(32, 4, /*seed=*/5);
  const Matrix<float> X = random_matrix<float>(40, 32, gen);
  sdpa::Options causal = serial_options;
  causal.causal = true;
  CHECK(same_bits(layer.forward(X, with_pool(causal, 3)), layer.forward(X, causal)));
}

}  // namespace test_concurrency
