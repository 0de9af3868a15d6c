// sdpa/detail/parallel.hpp - run independent work items on the caller's choice of threads.
#pragma once

#include "../config.hpp"
#include "../options.hpp"

#if SDPA_HAS_OPENMP
#include <omp.h>
#endif

SDPA_BEGIN_NAMESPACE
namespace detail {

/// Calls body(begin, end) over [0, count). Items are independent and each is computed by
/// one thread start to finish, so results never depend on how many threads there are.
/// OpenMP hands out one item at a time (items can differ in cost: causal masks make late
/// query blocks heavier).
template <class Body>
void parallel_for(Index count, const Options& options, const Body& body) {
  if (count <= 0) return;
  if (options.parallel_for) {
    options.parallel_for(count, body);
    return;
  }
#if SDPA_HAS_OPENMP
  const int threads = options.threads > 0 ? options.threads : omp_get_max_threads();
  if (threads > 1 && count > 1 && !omp_in_parallel()) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(threads)
    for (Index item = 0; item < count; ++item) body(item, item + 1);
    return;
  }
#endif
  body(Index(0), count);
}

}  // namespace detail
SDPA_END_NAMESPACE
