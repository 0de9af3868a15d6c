// tests/fuzz/thread_pools.hpp - user Options::parallel_for implementations whose results must
// be bit-identical to a serial call: the library promises that results never depend on how
// [0, count) is split, in which order the pieces run, or on which threads.
#pragma once

#include <sdpa/options.hpp>

#include <algorithm>
#include <string>
#include <thread>
#include <vector>

namespace sdpa_fuzz {

/// Pieces of 1, 2, 3, 1, 2, 3, ... items, from the end of the range backwards, on the calling
/// thread: a partition and an order no OpenMP schedule gives.
inline sdpa::ParallelFor scrambled_serial() {
  return [](sdpa::Index count, const std::function<void(sdpa::Index, sdpa::Index)>& body) {
    sdpa::Index end = count, size = 1;
    while (end > 0) {
      const sdpa::Index begin = std::max<sdpa::Index>(0, end - size);
      body(begin, end);
      end = begin;
      size = size % 3 + 1;
    }
  };
}

/// [0, count) in `threads` contiguous chunks, each on its own std::thread, joined before
/// returning.
inline sdpa::ParallelFor std_threads(int threads) {
  return [threads](sdpa::Index count, const std::function<void(sdpa::Index, sdpa::Index)>& body) {
    std::vector<std::thread> pool;
    const sdpa::Index chunk = (count + threads - 1) / threads;
    for (sdpa::Index begin = 0; begin < count; begin += chunk)
      pool.emplace_back([&body, begin, end = std::min(count, begin + chunk)] { body(begin, end); });
    for (std::thread& t : pool) t.join();
  };
}

/// One way of running a call whose result must match the first run bit for bit.
struct ThreadVariant {
  std::string name;
  int threads;
  sdpa::ParallelFor pool;

  /// `base` with this variant's threads and pool, running `kernel`.
  sdpa::Options applied_to(sdpa::Options base, sdpa::Kernel kernel) const {
    base.kernel = kernel;
    base.threads = threads;
    base.parallel_for = pool;
    return base;
  }
};

/// The variants every path is rerun with: 2 and 3 OpenMP threads and a scrambled serial pool;
/// for the input's main path also 3 std::threads and the input's own thread count.
inline std::vector<ThreadVariant> thread_variants(bool main_path, int input_threads) {
  std::vector<ThreadVariant> variants = {{"2 threads", 2, {}}, {"3 threads", 3, {}}, {"scrambled serial pool", 1, scrambled_serial()}};
  if (main_path) {
    variants.push_back({"3 std::threads", 1, std_threads(3)});
    variants.push_back({std::to_string(input_threads) + " threads (the input's)", input_threads, {}});
  }
  return variants;
}

}  // namespace sdpa_fuzz
