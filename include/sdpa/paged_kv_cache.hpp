// sdpa/paged_kv_cache.hpp - a KV cache of fixed-size pages shared by many sequences.
/// \file
/// PagedKVCache: keys and values in a pool of fixed-size pages, one page table per sequence
/// (vLLM's PagedAttention layout), with forks that share a prefix's pages; and attention()
/// that reads a head's pages in place.
#pragma once

#include "attention.hpp"
#include "kv_cache.hpp"

#include <algorithm>
#include <cstddef>
#include <utility>
#include <vector>

SDPA_BEGIN_NAMESPACE

namespace detail {

/// The kernel a call on a paged cache of S runs: Simd for int8 blocks (the only path that
/// reads them), else the one Options choose.
template <class T, class S>
Kernel paged_kernel(const Options& options, Index nq, Index nk) {
  return is_quantized<S> ? Kernel::Simd : resolve_kernel<T>(options.kernel, nq, nk);
}

/// Runs one head of Q against one head of a paged cache, validated.
template <class T, class S>
void dispatch_paged(MatrixView<const T> q, const PagedView<const S>& k, const PagedView<const S>& v,
                    MatrixView<T> out, double scale, const HeadMasks& masks, const Options& options) {
  const Kernel kernel = paged_kernel<T, S>(options, q.rows, k.rows);
  if constexpr (!is_quantized<S>) {
    if (kernel == Kernel::Reference) return kernels::reference_attention(q, k, v, out, scale, masks, options);
  }
  if (kernel == Kernel::Simd && std::is_same_v<compute_type<T>, float>)
    return kernels::with_target(sdpa::isa(), [&](auto target) {
      decltype(target)::paged_head(q, k, v, out, nullptr, scale, masks, options, true);
    });
  kernels::scalar::Target::paged_head(q, k, v, out, nullptr, scale, masks, options, false);
}

/// Validates, then runs one head of Q against one head of a paged cache. Nothing is written
/// before validation has passed. (The cache's pages are its own memory: `out` cannot overlap
/// them, so only Q is checked for overlap.)
template <class T, class S>
void run_paged_attention(const char* function, MatrixView<const T> q, const PagedView<const S>& k,
                         const PagedView<const S>& v, MatrixView<T> out, const Options& options,
                         HeadOf head = {}) {
  check_storage<T, S>();
  using C = compute_type<T>;
  sdpa::isa();  // first of all, the CPU check (isa.hpp)
  const Index dk = features<S>(k.cols), dv = features<S>(v.cols);
  validate_attention<C>(function, q.rows, q.cols, k.rows, dk, &v.rows, &dv, options, head.count);
  reject_batched_options(function, options);
  check_kernel_for<S>(function, options);
  validate_output(function, out, q.rows, dv, options, static_cast<const C*>(nullptr), std::pair{"Q", q});
  dispatch_paged(q, k, v, out, resolve_scale<C>(function, options, q.cols), HeadMasks::of(options, head.index),
                 options);
}

}  // namespace detail

SDPA_END_NAMESPACE

namespace sdpa {

/// One layer's keys and values for many sequences, in a pool of `pages` pages of `page_size`
/// tokens allocated (and touched) once. Each sequence has a page table: its token t is row
/// t % page_size of page table[t / page_size]. Pages are reference-counted, so that
/// sequences can share them: fork() gives a new sequence the pages of another (a shared
/// prompt, beam search, parallel sampling), and the first append to a shared, partly filled
/// last page copies it first (copy on write); full shared pages stay shared for good.
/// free() returns a sequence's pages to the pool when no other sequence holds them. A page is
/// one block of memory, its keys [kv_heads, page_size, d_k] and then its values [kv_heads,
/// page_size, d_v]: each head's rows are contiguous, and attention reads them in place
/// (PagedView). The multi-head attention() below reads a page's block whole, every head at
/// once: scattered pages stream from memory at nearly the rate of a contiguous cache only in
/// such long runs (README, "Paged KV cache"). T as for KVCache: float, double,
/// long double, Eigen::half, Eigen::bfloat16 or BlockQ8_0 (int8 blocks of 32 features).
/// Not safe to modify from several threads at once; reading (attention) is.
///
///     sdpa::PagedKVCache<float> cache(/*kv_heads=*/8, 64, 64, /*page_size=*/16, /*pages=*/4096);
///     const sdpa::Index a = cache.add_sequence();
///     auto y = layer.step(prompt, cache, a);          // fills pages of a
///     const sdpa::Index b = cache.fork(a);            // b shares a's pages
///     auto ya = layer.step(token_a, cache, a);        // a's last page is copied, if partly filled
///     auto yb = layer.step(token_b, cache, b);
template <class T>
class PagedKVCache {
  static_assert(detail::is_storage_type<T> || is_quantized<T>,
                "sdpa::PagedKVCache: T must be float, double, long double, Eigen::half, Eigen::bfloat16 or "
                "sdpa::BlockQ8_0");
  static constexpr Index kFeaturesPerElement = features_per_element<T>;

 public:
  /// A pool of `pages` pages of `page_size` tokens, each holding keys of `kv_heads` heads of
  /// `head_dim` features and values of `value_head_dim`. Throws std::invalid_argument unless
  /// every size is at least 1 (and, for BlockQ8_0, the head dims are multiples of 32).
  PagedKVCache(Index kv_heads, Index head_dim, Index value_head_dim, Index page_size, Index pages)
      : kv_heads_(kv_heads), head_dim_(head_dim), value_head_dim_(value_head_dim), page_size_(page_size),
        pages_(pages) {
    const char* fn = "PagedKVCache";
    if (kv_heads < 1 || head_dim < 1 || value_head_dim < 1 || page_size < 1 || pages < 1)
      detail::fail(fn, "kv_heads ", kv_heads, ", head dims ", head_dim, "/", value_head_dim, ", page_size ", page_size,
                   " and pages ", pages, " must all be at least 1");
    detail::check_cache_head_dims<T>(fn, head_dim, value_head_dim);
    key_elements_ = head_dim / kFeaturesPerElement;
    value_elements_ = value_head_dim / kFeaturesPerElement;
    page_elements_ = kv_heads * page_size * (key_elements_ + value_elements_);
    pool_.resize(elements(key_elements_ + value_elements_));
    references_.assign(std::size_t(pages), 0);
    for (Index p = pages; p-- > 0;) free_.push_back(p);  // page 0 is handed out first
  }

  /// Key/value heads per token.
  Index kv_heads() const { return kv_heads_; }
  /// Features per key head (d_k).
  Index head_dim() const { return head_dim_; }
  /// Features per value head (d_v).
  Index value_head_dim() const { return value_head_dim_; }
  /// Tokens per page.
  Index page_size() const { return page_size_; }
  /// Pages in the pool.
  Index pages() const { return pages_; }
  /// Pages no sequence holds.
  Index free_pages() const { return Index(free_.size()); }
  /// How many sequences hold `page` (0: it is free).
  Index references(Index page) const { return references_[std::size_t(checked_page(page))]; }

  /// A new, empty sequence; returns its id (ids of freed sequences are reused).
  Index add_sequence() {
    std::size_t s = 0;
    while (s < sequences_.size() && sequences_[s].live) ++s;
    if (s == sequences_.size()) sequences_.emplace_back();
    sequences_[s] = {{}, 0, true};
    return Index(s);
  }

  /// A new sequence holding `length` tokens in the pages of `table` (a scheduler's own block
  /// table, as vLLM passes them): each page must lie in [0, pages()), and the table must have
  /// exactly ceil(length / page_size) pages. The pages' contents are taken as they are; each
  /// page is now held by one more sequence.
  Index adopt(const std::vector<Index>& table, Index length) {
    const char* fn = "PagedKVCache::adopt";
    if (length < 0 || Index(table.size()) != (length + page_size_ - 1) / page_size_)
      detail::fail(fn, "a page table of ", table.size(), " pages cannot hold exactly ", length, " tokens in pages of ",
                   page_size_, ": it needs ", length < 0 ? 0 : (length + page_size_ - 1) / page_size_);
    for (std::size_t i = 0; i < table.size(); ++i)
      if (table[i] < 0 || table[i] >= pages_)
        detail::fail(fn, "page table entry ", i, " is page ", table[i], ", outside the pool's [0, ", pages_, ")");
    for (const Index page : table) hold(page);
    const Index s = add_sequence();
    sequences_[std::size_t(s)].table = table;
    sequences_[std::size_t(s)].length = length;
    return s;
  }

  /// A new sequence sharing every page (and token) of `sequence`.
  Index fork(Index sequence) {
    const Sequence copy = live(sequence);
    for (const Index page : copy.table) ++references_[std::size_t(page)];
    const Index s = add_sequence();
    sequences_[std::size_t(s)] = copy;
    return s;
  }

  /// Ends `sequence`: its pages go back to the pool unless another sequence holds them.
  void free(Index sequence) {
    truncate(sequence, 0);
    sequences_[std::size_t(sequence)].live = false;
  }

  /// Tokens cached in `sequence`.
  Index length(Index sequence) const { return live(sequence).length; }
  /// The pages of `sequence`, in token order.
  const std::vector<Index>& page_table(Index sequence) const { return live(sequence).table; }

  /// Tokens that can still be appended to `sequence` with the pages now free (a shared,
  /// partly filled last page needs one of them for its copy).
  Index room(Index sequence) const {
    const Sequence& s = live(sequence);
    const Index in_last = s.length % page_size_, free_tokens = free_pages() * page_size_;
    if (in_last == 0) return free_tokens;
    if (references_[std::size_t(s.table.back())] == 1) return free_tokens + page_size_ - in_last;
    return free_tokens == 0 ? 0 : free_tokens - in_last;
  }

  /// Appends n tokens to `sequence`: keys n x (kv_heads head_dim), values n x (kv_heads
  /// value_head_dim), heads side by side as a projection produces them, of any element type
  /// (rounded to T). Throws std::invalid_argument, changing nothing, when the pool cannot hold
  /// them or they have the wrong shape.
  template <class DK, class DV>
  void append(Index sequence, const Eigen::MatrixBase<DK>& keys, const Eigen::MatrixBase<DV>& values) {
    const char* fn = "PagedKVCache::append";
    const detail::Input<typename DK::Scalar> k(keys);
    const detail::Input<typename DV::Scalar> v(values);
    const Index n = k.rows();
    detail::check_cache_tokens<T>(fn, k, v, kv_heads_, head_dim_, value_head_dim_);
    if (n > room(sequence))
      detail::fail(fn, "sequence ", sequence, " holds ", length(sequence), " tokens; ", n, " more need more than the ",
                   free_pages(), " free pages of ", page_size_, " tokens");
    Sequence& s = live(sequence);
    if (n > 0 && s.length % page_size_ != 0 && references_[std::size_t(s.table.back())] > 1) copy_last_page(s);
    for (Index t = 0; t < n; ++t, ++s.length) {
      if (s.length % page_size_ == 0) s.table.push_back(take_page());
      const Index page = s.table.back(), row = s.length % page_size_;
      for (Index h = 0; h < kv_heads_; ++h)
        detail::store_cache_token(k, v, t, h, head_dim_, value_head_dim_, key_row(page, h, row), value_row(page, h, row));
    }
  }

  /// Drops the tokens of `sequence` from position `length` on, releasing the pages it no
  /// longer needs (rolls back an append, e.g. a rejected speculative draft). Throws
  /// std::invalid_argument unless 0 <= length <= length(sequence).
  void truncate(Index sequence, Index length) {
    Sequence& s = live(sequence);
    if (length < 0 || length > s.length)
      detail::fail("PagedKVCache::truncate", "sequence ", sequence, " holds ", s.length, " tokens: cannot truncate it to ",
                   length);
    const std::size_t keep = std::size_t((length + page_size_ - 1) / page_size_);
    for (std::size_t i = keep; i < s.table.size(); ++i) release(s.table[i]);
    s.table.resize(keep);
    s.length = length;
  }

  /// The cached keys of one head of `sequence`: length(sequence) x head_dim(), read in place
  /// through its page table (valid until the sequence's pages change).
  PagedView<const T> keys(Index sequence, Index head) const {
    const Sequence& s = live(sequence);
    return {pool_.data() + checked_head(head) * page_size_ * key_elements_, s.table.data(), page_size_,
            page_elements_, key_elements_, s.length, key_elements_, 0};
  }
  /// The cached values of one head of `sequence`: length(sequence) x value_head_dim(), in place.
  PagedView<const T> values(Index sequence, Index head) const {
    const Sequence& s = live(sequence);
    return {pool_.data() + values_offset() + checked_head(head) * page_size_ * value_elements_, s.table.data(),
            page_size_, page_elements_, value_elements_, s.length, value_elements_, 0};
  }

 private:
  struct Sequence {
    std::vector<Index> table;
    Index length = 0;
    bool live = false;
  };

  const Sequence& live(Index sequence) const {
    if (sequence < 0 || sequence >= Index(sequences_.size()) || !sequences_[std::size_t(sequence)].live)
      detail::fail("PagedKVCache", "sequence ", sequence, " does not exist (add_sequence, fork or adopt make one)");
    return sequences_[std::size_t(sequence)];
  }
  Sequence& live(Index sequence) { return const_cast<Sequence&>(std::as_const(*this).live(sequence)); }
  Index checked_head(Index head) const {
    if (head < 0 || head >= kv_heads_) detail::fail("PagedKVCache", "head ", head, " is outside [0, ", kv_heads_, ")");
    return head;
  }
  Index checked_page(Index page) const {
    if (page < 0 || page >= pages_) detail::fail("PagedKVCache", "page ", page, " is outside [0, ", pages_, ")");
    return page;
  }
  /// pages x kv_heads x page_size x features (every size checked >= 1 above): the pool, with
  /// features = key and value elements of a token's head.
  std::size_t elements(Index features) const {
    return detail::cache_elements<T>("PagedKVCache", {"pages", "kv_heads", "page_size", "features"},
                                     {pages_, kv_heads_, page_size_, features});
  }
  Index take_page() {  // room() was checked: there is one
    const Index page = free_.back();
    free_.pop_back();
    references_[std::size_t(page)] = 1;
    return page;
  }
  void hold(Index page) {
    if (references_[std::size_t(page)]++ == 0) free_.erase(std::find(free_.begin(), free_.end(), page));
  }
  void release(Index page) {
    if (--references_[std::size_t(page)] == 0) free_.push_back(page);
  }
  /// Gives `s` its own copy of its shared last page (the rows it holds).
  void copy_last_page(Sequence& s) {
    const Index shared = s.table.back(), copy = take_page(), rows = s.length % page_size_;
    for (Index h = 0; h < kv_heads_; ++h) {
      std::copy(key_row(shared, h, 0), key_row(shared, h, rows), key_row(copy, h, 0));
      std::copy(value_row(shared, h, 0), value_row(shared, h, rows), value_row(copy, h, 0));
    }
    release(shared);
    s.table.back() = copy;
  }
  /// Where a page's values start within its block: after its keys.
  Index values_offset() const { return kv_heads_ * page_size_ * key_elements_; }
  T* key_row(Index page, Index h, Index row) {
    return pool_.data() + page * page_elements_ + (h * page_size_ + row) * key_elements_;
  }
  T* value_row(Index page, Index h, Index row) {
    return pool_.data() + page * page_elements_ + values_offset() + (h * page_size_ + row) * value_elements_;
  }

  Index kv_heads_, head_dim_, value_head_dim_, page_size_, pages_, key_elements_ = 0, value_elements_ = 0,
      page_elements_ = 0;
  std::vector<T> pool_;  // pages x (keys, values): elements(), page_elements_ per page
  std::vector<Index> references_, free_;
  std::vector<Sequence> sequences_;
};

}  // namespace sdpa

SDPA_BEGIN_NAMESPACE
namespace detail {

/// Validates, then runs every query head of Q (Nq x heads d_k, heads side by side) against
/// sequence `sequence` of a paged cache, into out (Nq x heads d_v). Query head h reads kv
/// head h / (heads / kv_heads). Nothing is written before validation has passed.
template <class T, class S>
void run_paged_heads(const char* function, MatrixView<const T> q, const PagedKVCache<S>& cache, Index sequence,
                     MatrixView<T> out, const Options& options) {
  check_storage<T, S>();
  using C = compute_type<T>;
  sdpa::isa();  // first of all, the CPU check (isa.hpp)
  const Index dk = cache.head_dim(), dv = cache.value_head_dim(), kv_heads = cache.kv_heads();
  const Index nk = cache.length(sequence);  // (throws for a sequence that does not exist)
  if (q.cols % (kv_heads * dk) != 0 || q.cols == 0)
    fail(function, "Q is ", shape(q.rows, q.cols), " but the cache holds ", kv_heads, " key heads of d_k = ", dk,
         ": Q needs heads side by side, a multiple of ", kv_heads * dk, " columns");
  const Index heads = q.cols / dk, group = heads / kv_heads;
  validate_attention<C>(function, q.rows, dk, nk, dk, &nk, &dv, options, heads);
  reject_batched_options(function, options);
  check_kernel_for<S>(function, options);
  validate_output(function, out, q.rows, heads * dv, options, static_cast<const C*>(nullptr), std::pair{"Q", q});
  const double scale = resolve_scale<C>(function, options, dk);
  std::vector<PagedView<const S>> k, v;
  for (Index h = 0; h < kv_heads; ++h) k.push_back(cache.keys(sequence, h)), v.push_back(cache.values(sequence, h));
  std::vector<HeadMasks> masks;
  for (Index h = 0; h < heads; ++h) masks.push_back(HeadMasks::of(options, h));
  if (paged_kernel<T, S>(options, q.rows, nk) == Kernel::Simd && std::is_same_v<C, float>)
    return kernels::with_target(sdpa::isa(), [&](auto target) {
      decltype(target)::paged_heads(q, k.data(), v.data(), group, out, scale, masks.data(), heads, options);
    });
  for (Index h = 0; h < heads; ++h)
    dispatch_paged(q.middle_cols(h * dk, dk), k[std::size_t(h / group)], v[std::size_t(h / group)],
                   out.middle_cols(h * dv, dv), scale, masks[std::size_t(h)], options);
}

}  // namespace detail
SDPA_END_NAMESPACE

namespace sdpa {

/// Multi-head attention of Q against sequence `sequence` of a paged cache, read in place:
/// Q is Nq x (heads d_k), the query heads side by side as a projection gives them, heads a
/// multiple of the cache's kv_heads (query head h reads kv head h / (heads / kv_heads):
/// grouped-query attention); the result is Nq x (heads d_v), side by side. Options as for the
/// 2-D attention(), applying to every head, with the per-head lists (alibi_slopes, sinks) of
/// `heads` entries. Decoding (up to 4 queries, on the Simd path) reads the keys of every head
/// of a page, then their values, in one pass: each head's rows are those of the head-by-head
/// calls (and of a contiguous cache), bit for bit, at a higher rate from scattered pages.
///
///     sdpa::Matrix<float> y = sdpa::attention(q, cache, sequence, options);  // q: 1 x (heads d_k)
template <class DQ, class S>
Matrix<typename DQ::Scalar> attention(const Eigen::MatrixBase<DQ>& Q, const PagedKVCache<S>& cache, Index sequence,
                                      const Options& options = {}) {
  using T = typename DQ::Scalar;
  const detail::Input<T> q(Q);
  Matrix<T> out(q.rows(), q.cols() / cache.head_dim() * cache.value_head_dim());  // (Q's shape is checked)
  detail::run_paged_heads<T, S>("attention", q.view(), cache, sequence,
                                MatrixView<T>(out.data(), out.rows(), out.cols(), out.cols()), options);
  return out;
}

/// The multi-head attention() above, written into `out` (Nq x heads d_v, a Matrix, Map or
/// block of one): a decoding loop that owns its output touches no fresh memory per token.
template <class DQ, class S, class DO, class = detail::if_writable<DO>>
void attention_into(const Eigen::MatrixBase<DQ>& Q, const PagedKVCache<S>& cache, Index sequence, DO&& out,
                    const Options& options = {}) {
  using T = typename DQ::Scalar;
  const detail::Input<T> q(Q);
  detail::run_paged_heads<T, S>("attention_into", q.view(), cache, sequence,
                                detail::output_view<T>("attention_into", "out", out), options);
}

/// O = softmax(scale Q K^T + masks) V for Q (Nq x d_k) against one head of a paged cache
/// (PagedKVCache::keys and values), read in place page by page: the result of the same call
/// on a contiguous cache, bit for bit on the decode path (up to 4 queries). Options as for
/// the 2-D attention(), lists of one entry.
template <class DQ, class S>
Matrix<typename DQ::Scalar> attention(const Eigen::MatrixBase<DQ>& Q, const PagedView<const S>& K,
                                      const PagedView<const S>& V, const Options& options = {}) {
  using T = typename DQ::Scalar;
  const detail::Input<T> q(Q);
  Matrix<T> out(q.rows(), detail::features<S>(V.cols));
  detail::run_paged_attention<T, S>("attention", q.view(), K, V,
                                    MatrixView<T>(out.data(), out.rows(), out.cols(), out.cols()), options);
  return out;
}

}  // namespace sdpa
