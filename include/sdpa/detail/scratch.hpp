// sdpa/detail/scratch.hpp - per-thread working memory that outlives a call.
//
// Fresh pages cost a fault each on first touch (about 12 us per 4 KiB on the VMs we test
// on), so the tiled kernels keep their tiles in buffers that belong to the thread and only
// ever grow: a loop of calls of one shape allocates once. Each buffer is named by a Slot so
// that two buffers in use at once never alias.
#pragma once

#include "../views.hpp"

#include <Eigen/Core>

#include <cstddef>
#include <vector>

namespace sdpa::detail {

enum class Slot { QueryTile, Scores, Accumulator, RowStats, Rescale, PackedKeys, PackedValues };

/// At least `count` elements of this thread's buffer for `slot`; contents are unspecified.
template <class T, Slot slot>
T* thread_scratch(Index count) {
  thread_local std::vector<T, Eigen::aligned_allocator<T>> buffer;
  if (Index(buffer.size()) < count) buffer.resize(std::size_t(count));
  return buffer.data();
}

}  // namespace sdpa::detail
