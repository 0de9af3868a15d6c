// sdpa/detail/parallel.hpp - run independent work items on the caller's choice of threads.
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#include <algorithm>
#include <atomic>
#include <exception>

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif

SDPA_BEGIN_NAMESPACE
namespace detail {

/// Calls body(begin, end) over [0, count). Items are independent and each is computed by
/// one thread start to finish, so results never depend on how many threads there are.
/// OpenMP hands out one item at a time (items can differ in cost: causal masks make late
/// query blocks heavier). An exception thrown by an item (bad_alloc of a scratch buffer)
/// reaches the caller as it would with one thread: the first one is kept, the items not yet
/// started are skipped, and it is rethrown once every thread has left the region (an
/// exception may not cross the end of an OpenMP region: the runtime would call terminate).
template <class Body>
void parallel_for(Index count, const Options& options, const Body& body) {
  if (count <= 0) return;
  if (options.parallel_for) {
    options.parallel_for(count, body);
    return;
  }
#if SDPA_HAS_OPENMP
  const Index threads = std::min<Index>(count, options.threads > 0 ? options.threads : omp_get_max_threads());
  if (threads > 1 && !omp_in_parallel()) {
    std::exception_ptr error;
    std::atomic<bool> failed{false};
#pragma omp parallel for schedule(dynamic, 1) num_threads(int(threads))
    for (Index item = 0; item < count; ++item) {
      if (failed.load(std::memory_order_relaxed)) continue;
      try {
        body(item, item + 1);
      } catch (...) {
#pragma omp critical(sdpa_parallel_for_error)
        if (!error) error = std::current_exception();
        failed.store(true, std::memory_order_relaxed);
      }
    }
    if (error) std::rethrow_exception(error);
    return;
  }
#endif
  body(Index(0), count);
}

}  // namespace detail
SDPA_END_NAMESPACE
