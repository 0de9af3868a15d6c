// sdpa/detail/scratch.hpp - per-thread working memory that outlives a call.
//
// Fresh pages cost a fault each on first touch (about 12 us per 4 KiB on the VMs we test
// on), so the tiled kernels keep their tiles in buffers that belong to the thread and only
// ever grow: a loop of calls of one shape allocates once. Each buffer is named by a Slot so
// that two buffers in use at once never alias.
#pragma once

#include "../config.hpp"
#include "../views.hpp"

#include <cstddef>
#include <new>
#include <vector>

SDPA_BEGIN_NAMESPACE
namespace detail {

enum class Slot {
  QueryTile, Scores, Accumulator, RowStats, Rescale, TotalAccumulator, RowTotals, ReferenceRow, Packed, ChunkPacked,
  Partials, GroupQueries, GroupOutputs, RowAlibi, Ones, UnitRescale, PagedRows, QueryPairs, WeightPairs,
  BackwardRows, BackwardTouched, BackwardTile, BackwardGroup
};

/// Cache-line (and zmm) aligned storage from C++17's aligned new: the same allocation and
/// release whatever the build's flags (Eigen's aligned_allocator changes with its
/// EIGEN_MAX_ALIGN_BYTES, which follows -march).
template <class T>
struct CacheAligned {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};
  CacheAligned() = default;
  template <class U>
  CacheAligned(const CacheAligned<U>&) {}  // NOLINT(google-explicit-constructor): allocator rebind
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlignment); }
  template <class U>
  bool operator==(const CacheAligned<U>&) const { return true; }
  template <class U>
  bool operator!=(const CacheAligned<U>&) const { return false; }
};

template <class T>
using AlignedVector = std::vector<T, CacheAligned<T>>;

/// At least `count` elements of this thread's buffer for `slot`; contents are unspecified.
/// For work items that run start to finish on one thread (nothing else runs on that thread
/// until they return).
template <class T, Slot slot>
T* thread_scratch(Index count) {
  thread_local AlignedVector<T> buffer;
  if (Index(buffer.size()) < count) buffer.resize(std::size_t(count));
  return buffer.data();
}

/// A buffer held for a whole call, across a parallel_for: the calling thread's buffer for
/// `slot` when it is free, or a fresh one when an earlier call on this thread still holds it
/// (a thread pool that runs queued work while the caller waits can start a second call).
template <class T, Slot slot>
class ScratchLease {
 public:
  explicit ScratchLease(Index count) {
    Shared& shared = this_thread();
    AlignedVector<T>& buffer = shared.busy ? own_ : shared.buffer;
    if (!shared.busy) {
      shared.busy = true;
      held_ = &shared;
    }
    if (Index(buffer.size()) < count) buffer.resize(std::size_t(count));
    data_ = buffer.data();
  }
  ~ScratchLease() {
    if (held_) held_->busy = false;
  }
  ScratchLease(const ScratchLease&) = delete;
  ScratchLease& operator=(const ScratchLease&) = delete;

  T* data() const { return data_; }

 private:
  struct Shared {
    AlignedVector<T> buffer;
    bool busy = false;
  };
  static Shared& this_thread() {
    thread_local Shared shared;
    return shared;
  }

  Shared* held_ = nullptr;
  AlignedVector<T> own_;
  T* data_ = nullptr;
};

}  // namespace detail
SDPA_END_NAMESPACE
