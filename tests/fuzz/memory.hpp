// tests/fuzz/memory.hpp - what a call may write. Every buffer an input owns is registered;
// before a call all are copied, after it they are compared: a call that threw must have changed
// nothing, and one that returned only the elements of its outputs (not their padding, not any
// input).
#pragma once

#include "finding.hpp"

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace sdpa_fuzz {

class Memory {
 public:
  void add(const char* name, const void* data, std::size_t bytes) {
    if (bytes) buffers_.push_back({name, static_cast<const unsigned char*>(data), bytes, {}});
  }
  template <class T>
  void add(const char* name, const std::vector<T>& v) {
    add(name, v.data(), v.size() * sizeof(T));
  }

  void snapshot() {
    ++stats().memory_checks;
    for (Buffer& b : buffers_) b.before.assign(b.data, b.data + b.bytes);
  }

  /// After a call that threw std::invalid_argument: nothing may have changed.
  void require_unchanged() const {
    for (const Buffer& b : buffers_)
      FUZZ_CHECK("a.untouched", std::memcmp(b.before.data(), b.data, b.bytes) == 0,
                 "the call threw std::invalid_argument but changed ", b.name, " (byte ", first_difference(b), ")");
  }

  /// After a call that returned: only bytes inside `writable` ([address, address + size)
  /// ranges: the output elements) may have changed.
  void require_only_written(std::vector<std::pair<const void*, std::size_t>> writable) const {
    std::sort(writable.begin(), writable.end());
    for (const Buffer& b : buffers_) {
      if (std::memcmp(b.before.data(), b.data, b.bytes) == 0) continue;
      for (std::size_t i = 0; i < b.bytes; ++i) {
        if (b.before[i] == b.data[i]) continue;
        const auto* address = b.data + i;
        auto it = std::upper_bound(writable.begin(), writable.end(), std::pair<const void*, std::size_t>(address, SIZE_MAX));
        const bool inside = it != writable.begin() && address < static_cast<const unsigned char*>(std::prev(it)->first) + std::prev(it)->second;
        FUZZ_CHECK("h.writes_outside_outputs", inside, "byte ", i, " of ", b.name,
                   " changed, but it is no element of an output (padding, another row's gap, or an input)");
        if (!inside) return;
      }
    }
  }

 private:
  struct Buffer {
    const char* name;
    const unsigned char* data;
    std::size_t bytes;
    std::vector<unsigned char> before;
  };
  static std::size_t first_difference(const Buffer& b) {
    for (std::size_t i = 0; i < b.bytes; ++i)
      if (b.before[i] != b.data[i]) return i;
    return b.bytes;
  }
  std::vector<Buffer> buffers_;
};

/// The byte ranges of elements at data[offset] for each offset.
template <class T>
void add_elements(std::vector<std::pair<const void*, std::size_t>>& ranges, const T* data,
                  const std::vector<std::ptrdiff_t>& offsets) {
  for (const auto o : offsets) ranges.emplace_back(static_cast<const void*>(data + o), sizeof(T));
}

}  // namespace sdpa_fuzz
