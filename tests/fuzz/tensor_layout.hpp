// tests/fuzz/tensor_layout.hpp - the shape and strides of a TensorView as the harness sees
// them: the offsets of its elements, its footprint, whether two elements share memory; and the
// batch masks ([B or 1, H or 1, Nq or 1, Nk]) in their broadcast layouts.
#pragma once

#include "masks.hpp"
#include "oracle.hpp"
#include "values.hpp"

#include <sdpa/views.hpp>

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

namespace sdpa_fuzz {

/// Element (b, h, n, f) at storage[start + b batch_stride + h head_stride + n token_stride + f].
struct TensorLayout {
  Index batch = 0, heads = 0, tokens = 0, features = 0;
  Index batch_stride = 0, head_stride = 0, token_stride = 0;
  Index start = 0;
  std::string name;

  bool has_elements() const { return batch > 0 && heads > 0 && tokens > 0 && features > 0; }
  bool negative() const {
    return batch < 0 || heads < 0 || tokens < 0 || features < 0 || batch_stride < 0 || head_stride < 0 || token_stride < 0;
  }
  Index offset(Index b, Index h, Index n, Index f) const {
    return start + b * batch_stride + h * head_stride + n * token_stride + f;
  }
  std::vector<Index> offsets() const {
    std::vector<Index> o;
    for (Index b = 0; b < batch; ++b)
      for (Index h = 0; h < heads; ++h)
        for (Index n = 0; n < tokens; ++n)
          for (Index f = 0; f < features; ++f) o.push_back(offset(b, h, n, f));
    return o;
  }
  /// Elements the storage must hold (at least 1, so that the view's data is never null).
  Index storage_size() const {
    Index size = 1;
    for (const Index o : offsets()) size = std::max(size, o + 1);
    return size;
  }
  /// Two elements at one address.
  bool self_overlapping() const {
    std::vector<Index> o = offsets();
    std::sort(o.begin(), o.end());
    return std::adjacent_find(o.begin(), o.end()) != o.end();
  }
  /// The two layouts (in one storage) share an address.
  bool overlaps(const TensorLayout& other) const {
    std::vector<Index> a = offsets(), b = other.offsets();
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    std::vector<Index> both;
    std::set_intersection(a.begin(), a.end(), b.begin(), b.end(), std::back_inserter(both));
    return !both.empty();
  }
  template <class T>
  sdpa::TensorView<T> view(T* storage) const {
    return {storage + start, batch, heads, tokens, features, batch_stride, head_stride, token_stride};
  }
  template <class T>
  Strided<T> head(const T* storage, Index b, Index h) const {
    return {storage + start + b * batch_stride + h * head_stride, tokens, features, token_stride, 1};
  }
  std::string describe() const {
    return str(name, " [", batch, ", ", heads, ", ", tokens, ", ", features, "] strides ", batch_stride, "/", head_stride,
               "/", token_stride, start ? str(" start ", start) : std::string());
  }
};

/// Layouts (fields kLayoutQ/K/V, kLayoutOut): 0 [B, H, N, d]; 1 [B, N, H, d]; 2 [B, H, N, d]
/// with padding after every token, head and sequence; 3 one sequence for all (batch stride 0);
/// 4 one head for all (head stride 0); 5 tokens overlapping (token stride < d); 6 one token for
/// all (token stride 0).
inline TensorLayout make_layout(int kind, Index batch, Index heads, Index tokens, Index features, Index pad) {
  TensorLayout l{batch, heads, tokens, features, heads * tokens * features, tokens * features, features, 0, "bhnd"};
  switch (kind) {
    case 1:
      l = {batch, heads, tokens, features, tokens * heads * features, features, heads * features, 0, "bnhd"};
      break;
    case 2:
      l.token_stride = features + pad;
      l.head_stride = tokens * l.token_stride + pad;
      l.batch_stride = heads * l.head_stride + pad;
      l.name = "padded";
      break;
    case 3: l.batch_stride = 0; l.name = "batch stride 0"; break;
    case 4: l = {batch, heads, tokens, features, tokens * features, 0, features, 0, "head stride 0"}; break;
    case 5:
      l.token_stride = features >= 2 ? 1 + pad % (features - 1) : 0;
      l.head_stride = tokens * features;
      l.name = "overlapping tokens";
      break;
    case 6: l.token_stride = 0; l.name = "token stride 0"; break;
    default: break;
  }
  return l;
}

/// options.batch_mask (bool) or options.batch_bias (float) from the bits of kBatchMask /
/// kBatchBias: bit 0 present; bits 1-3 size 1 for batch, heads, tokens (broadcast); bit 4 stride
/// 0 on those size-1 dims; bit 5 a full-size dim repeated by stride 0.
template <class E>
struct BatchTensor {
  std::unique_ptr<E[]> data;
  std::size_t size = 0;
  TensorLayout layout;

  bool present() const { return data != nullptr; }
  E at(Index b, Index h, Index i, Index j) const {
    const TensorLayout& l = layout;
    return data[std::size_t(l.offset(l.batch == 1 ? 0 : b, l.heads == 1 ? 0 : h, l.tokens == 1 ? 0 : i, j))];
  }
  sdpa::TensorView<const E> view() const { return layout.view<const E>(data.get()); }
  std::string describe() const { return present() ? layout.describe() : "none"; }
};

template <class E, class Value>
BatchTensor<E> make_batch_tensor(std::uint8_t bits, Index batch, Index heads, Index nq, Index nk, const Value& value) {
  BatchTensor<E> t;
  if (!(bits & 1)) return t;
  const Index b = bits & 2 ? 1 : batch, h = bits & 4 ? 1 : heads, n = bits & 8 ? 1 : nq;
  TensorLayout& l = t.layout;
  l = {b, h, n, nk, h * n * nk, n * nk, nk, 0, "broadcast"};
  if (bits & 16) {
    if (b == 1) l.batch_stride = 0;
    if (h == 1) l.head_stride = 0;
    if (n == 1) l.token_stride = 0;
  }
  if (bits & 32) {
    if (h > 1) l.head_stride = 0;
    else if (b > 1) l.batch_stride = 0;
    else if (n > 1) l.token_stride = 0;
  }
  t.size = std::size_t(l.storage_size());
  t.data.reset(new E[t.size]);
  for (std::size_t i = 0; i < t.size; ++i) t.data[i] = value();
  return t;
}

}  // namespace sdpa_fuzz
