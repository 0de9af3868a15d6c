// tests/fuzz/scenario_2d.hpp - scenario 0: one head through the 2-D API. sdpa::attention_into
// with an LSE on every path (Reference, Blocked, Simd, Auto), then again with 2 and 3 threads and
// user thread pools, then sdpa::attention or attention_into without an LSE on the input's main
// kernel. Q, K and V are Eigen Maps in five layouts (two of them, outer stride 0 and overlapping
// rows, must be read as the Map says or rejected); the output is a Map, padded or not, and the
// invalid mutations give it stride 0, overlapping rows, or memory shared with an input.
#pragma once

#include "call_options.hpp"
#include "checks.hpp"
#include "masks.hpp"
#include "memory.hpp"
#include "oracle.hpp"
#include "thread_pools.hpp"
#include "values.hpp"

#include <sdpa/sdpa.hpp>

#include <optional>

namespace sdpa_fuzz {

template <class T>
using RowMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <class T>
using ColMatrix = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::ColMajor>;

enum class MapLayout { row_major, padded, stride_zero, overlapping_rows, column_major };

inline const char* name(MapLayout l) {
  switch (l) {
    case MapLayout::padded: return "padded rows";
    case MapLayout::stride_zero: return "outer stride 0";
    case MapLayout::overlapping_rows: return "overlapping rows";
    case MapLayout::column_major: return "column-major";
    default: return "row-major";
  }
}

/// Q, K or V of a 2-D call: its memory, and the Eigen Map that views it.
template <class T>
struct MapOperand {
  std::vector<T> storage;
  Index rows = 0, cols = 0, stride = 0;  // stride: Eigen's outer stride
  MapLayout layout = MapLayout::row_major;

  bool column_major() const { return layout == MapLayout::column_major; }
  Strided<T> strided() const {
    return column_major() ? Strided<T>{storage.data(), rows, cols, 1, stride} : Strided<T>{storage.data(), rows, cols, stride, 1};
  }
  std::vector<Index> offsets() const {
    return column_major() ? matrix_offsets(rows, cols, 1, stride) : matrix_offsets(rows, cols, stride, 1);
  }
  /// Rows that share memory: the API must read them as the Map says, or reject them.
  bool rows_share_memory() const {
    return rows >= 2 && (layout == MapLayout::stride_zero || layout == MapLayout::overlapping_rows);
  }
  /// Each row's elements belong to that row alone (it can be poisoned without touching another).
  bool rows_own_memory() const { return !(layout == MapLayout::stride_zero || layout == MapLayout::overlapping_rows); }
  bool has_elements() const { return rows > 0 && cols > 0; }
  void set_row(Index i, T value) {
    const Strided<T> s = strided();
    for (Index c = 0; c < cols; ++c) storage[std::size_t(i * s.row_stride + c * s.col_stride)] = value;
  }
  /// Calls f with the Eigen Map of this operand (a different type per storage order).
  template <class F>
  void visit(F&& f) const {
    if (column_major())
      f(Eigen::Map<const ColMatrix<T>, 0, Eigen::OuterStride<>>(storage.data(), rows, cols, Eigen::OuterStride<>(stride)));
    else
      f(Eigen::Map<const RowMatrix<T>, 0, Eigen::OuterStride<>>(storage.data(), rows, cols, Eigen::OuterStride<>(stride)));
  }
  std::string describe() const { return str(rows, "x", cols, " ", name(layout), " (outer stride ", stride, ")"); }
};

template <class T>
MapOperand<T> make_map_operand(MapLayout layout, Index rows, Index cols, Index pad) {
  MapOperand<T> m;
  m.layout = layout;
  m.rows = rows;
  m.cols = cols;
  switch (layout) {
    case MapLayout::padded: m.stride = cols + pad; break;
    case MapLayout::stride_zero: m.stride = 0; break;
    case MapLayout::overlapping_rows: m.stride = cols >= 2 ? 1 + pad % (cols - 1) : 0; break;
    case MapLayout::column_major: m.stride = rows + pad - 1; break;
    default: m.stride = cols; break;
  }
  Index size = 1;
  for (const Index o : m.offsets()) size = std::max(size, o + 1);
  // Eigen::Ref reads a Map's outer stride of 0 as "contiguous": a library that goes through a
  // Ref reads rows x cols elements. They exist (no sanitizer report) and hold NaN, like every
  // element no view covers, so that a misreading shows in the results.
  if (layout == MapLayout::stride_zero) size = std::max(size, rows * cols);
  m.storage.assign(std::size_t(size), std::numeric_limits<T>::quiet_NaN());
  return m;
}

/// The output of attention_into: a row-major Map at `data` (its own storage, or an input's for
/// the overlap mutations).
template <class T>
struct OutOperand {
  std::vector<T> storage;
  T* data = nullptr;
  Index rows = 0, cols = 0, stride = 0;

  Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>> map() const {
    return Eigen::Map<RowMatrix<T>, 0, Eigen::OuterStride<>>(data, rows, cols, Eigen::OuterStride<>(stride));
  }
  std::vector<Index> offsets() const { return matrix_offsets(rows, cols, stride, 1); }
  bool rows_overlap() const { return rows >= 2 && stride < cols; }
  bool has_elements() const { return rows > 0 && cols > 0; }
  /// The elements, row by row (what the determinism checks compare).
  std::vector<T> gather() const {
    std::vector<T> values;
    for (const Index o : offsets()) values.push_back(data[o]);
    return values;
  }
};

/// The poison of field kPoison, where the contract says nothing is read: NaN (Inf with bit 2)
/// in the K and V rows no query may see (bit 0, when `keys`) and in the Q rows that see no key
/// (bit 1, when `queries`).
template <class T>
void poison_unread(int poison, const HeadProblem<T>& problem, MapOperand<T>& Q, MapOperand<T>& K, MapOperand<T>& V,
                   bool keys, bool queries) {
  const T value = poison & 4 ? std::numeric_limits<T>::infinity() : std::numeric_limits<T>::quiet_NaN();
  for (Index j = 0; j < K.rows && keys && (poison & 1); ++j)
    if (!problem.key_seen(j)) K.set_row(j, value), V.set_row(j, value);
  for (Index i = 0; i < Q.rows && queries && (poison & 2); ++i)
    if (!problem.row_sees(i)) Q.set_row(i, value);
}

/// The invalid mutations of a 2-D call (field kInvalid = 1 + index).
enum class Mutation2D {
  none, scale_zero, scale_negative, scale_infinite, scale_nan, scale_1e300, scale_1e_50,
  mask_rows, mask_cols, bias_rows, bias_cols, key_lengths_count, key_length_negative, key_length_too_long,
  blocks_negative, threads_negative, v_rows, k_cols,
  out_rows, out_cols, out_stride_zero, out_stride_small, out_overlaps_q, out_overlaps_k, out_overlaps_v, out_overlaps_bias,
  lse_size, lse_overlaps_out, lse_overlaps_q, batched_option, count
};
inline const char* const kMutation2DNames[] = {
    "none", "scale_zero", "scale_negative", "scale_infinite", "scale_nan", "scale_1e300", "scale_1e-50",
    "mask_rows", "mask_cols", "bias_rows", "bias_cols", "key_lengths_count", "key_length_negative",
    "key_length_too_long", "blocks_negative", "threads_negative", "v_rows", "k_cols", "out_rows", "out_cols",
    "out_stride_zero", "out_stride_small", "out_overlaps_q", "out_overlaps_k", "out_overlaps_v", "out_overlaps_bias",
    "lse_size", "lse_overlaps_out", "lse_overlaps_q", "batched_option"};

/// What the options of any call of this input must satisfy (contract 1 and 7, shapes): the
/// expectation every call form shares.
template <class T>
Expectation expect_common(const sdpa::Options& o, Index nq, Index nk, Index dk, Index k_cols, Index v_rows,
                          const Masks& masks) {
  Expectation e;
  if (o.scale && !valid_scale<T>(*o.scale))
    e.invalid(str("options.scale = ", *o.scale, " is not positive and finite as ", type_name<T>()));
  else if (o.scale && !std::isfinite(T(*o.scale * 1.4426950408889634)))
    e.invalid(str("options.scale = ", *o.scale, " is finite as ", type_name<T>(),
                  " but scale * log2(e), which the tiled paths multiply by, is not"));
  if (k_cols != dk) e.invalid("K's head dim differs from Q's");
  if (v_rows != nk) e.invalid("V's rows differ from K's");
  const auto bad_shape = [&](Index rows, Index cols) { return (rows != nq && rows != 1) || cols != nk; };
  if (masks.mask.present() && bad_shape(masks.mask.rows, masks.mask.cols)) e.invalid("options.mask is not Nq x Nk or 1 x Nk");
  if (masks.bias.present && bad_shape(masks.bias.rows, masks.bias.cols)) e.invalid("options.bias is not Nq x Nk or 1 x Nk");
  const auto& lengths = masks.key_lengths;
  if (!lengths.empty() && Index(lengths.size()) != nq && lengths.size() != 1)
    e.invalid("options.key_lengths has neither Nq entries nor 1");
  for (const Index l : lengths)
    if (l < 0 || l > nk) e.invalid(str("options.key_lengths holds ", l, ", outside [0, Nk]"));
  if (o.blocks.query_rows < 0 || o.blocks.key_rows < 0) e.invalid("a negative block size");
  if (o.threads < 0) e.invalid("options.threads is negative");
  if (!o.sequence_lengths.empty() || !o.batch_mask.empty() || !o.batch_bias.empty())
    e.invalid("a batched option in a 2-D call");
  return e;
}

template <class T>
void run_2d(const ByteReader& in) {
  using M = Mutation2D;
  Random random(in.seed());
  const Index nq = in.byte(kQueries) % 41, nk = in.byte(kKeys) % 41;
  const Index dk = in.range(kHeadDim, 1, 20), dv = in.range(kValueDim, 1, 20), pad = in.range(kPadding, 1, 5);
  const M mutation = decode_mutation<M>(in, kMutation2DNames);
  const auto is = [&](M m) { return mutation == m; };

  // ---- operands, masks, output, LSE (every size settled before any pointer is taken)
  const auto layout = [&](Field f) {
    const MapLayout l = MapLayout(in.pick(f, 5));
    if (l == MapLayout::stride_zero && ignored("gen.map_stride_zero")) return MapLayout::row_major;
    if (l == MapLayout::overlapping_rows && ignored("gen.map_overlapping_rows")) return MapLayout::row_major;
    return l;
  };
  MapOperand<T> Q = make_map_operand<T>(layout(kLayoutQ), nq, dk, pad);
  MapOperand<T> K = make_map_operand<T>(layout(kLayoutK), nk, is(M::k_cols) ? dk + 1 : dk, pad);
  MapOperand<T> V = make_map_operand<T>(layout(kLayoutV), is(M::v_rows) ? nk + 1 : nk, dv, pad);
  Masks masks = make_masks(in, nq, nk, random);
  if (is(M::mask_rows) || is(M::mask_cols))
    masks.mask = make_mask(1, is(M::mask_rows) ? (nq == 0 ? 2 : nq + 1) : nq, is(M::mask_cols) ? nk + 1 : nk, pad, 0.8, random);
  constexpr int kBiasOfT = std::is_same_v<T, float> ? 1 : 3;  // make_bias layouts: a T-typed Nq x Nk bias
  if (is(M::bias_rows) || is(M::bias_cols) || is(M::out_overlaps_bias))
    masks.bias = make_bias(kBiasOfT, is(M::bias_rows) ? (nq == 0 ? 2 : nq + 1) : nq, is(M::bias_cols) ? nk + 1 : nk, 0, random);
  if (is(M::key_lengths_count)) masks.key_lengths.assign(std::size_t(nq == 0 ? 2 : nq + 1), 0);
  if ((is(M::key_length_negative) || is(M::key_length_too_long)) && masks.key_lengths.empty()) masks.key_lengths = {0};
  if (is(M::key_length_negative)) masks.key_lengths[std::size_t(random.below(Index(masks.key_lengths.size())))] = -1;
  if (is(M::key_length_too_long)) masks.key_lengths[std::size_t(random.below(Index(masks.key_lengths.size())))] = nk + 1;

  OutOperand<T> out;
  out.rows = is(M::out_rows) ? nq + 1 : nq;
  out.cols = is(M::out_cols) ? dv + 1 : dv;
  out.stride = in.pick(kLayoutOut, 2) == 1 ? out.cols + pad : out.cols;
  if (is(M::out_stride_zero)) out.stride = 0;
  if (is(M::out_stride_small)) out.stride = out.cols >= 2 ? 1 + pad % (out.cols - 1) : 0;
  Index out_size = std::max<Index>(1, out.rows * out.cols);  // Eigen's reading of stride 0 (see make_map_operand)
  for (const Index o : out.offsets()) out_size = std::max(out_size, o + 1);
  out.storage.assign(std::size_t(out_size), sentinel<T>());
  const Index lse_size = is(M::lse_size) ? nq + 1 : nq;
  std::vector<T> lse_storage(std::size_t(std::max<Index>(1, lse_size)), sentinel<T>());

  MapOperand<T>* host = is(M::out_overlaps_q) ? &Q : is(M::out_overlaps_k) ? &K : is(M::out_overlaps_v) ? &V : nullptr;
  std::vector<T>* bias_of_t = nullptr;
  if constexpr (std::is_same_v<T, float>) bias_of_t = &masks.bias.f;
  else bias_of_t = &masks.bias.d;
  if (host && Index(host->storage.size()) < out_size) host->storage.resize(std::size_t(out_size), std::numeric_limits<T>::quiet_NaN());
  if (is(M::out_overlaps_bias) && Index(bias_of_t->size()) < out_size) bias_of_t->resize(std::size_t(out_size), T(0));
  if (is(M::lse_overlaps_q) && Index(Q.storage.size()) < lse_size) Q.storage.resize(std::size_t(lse_size), std::numeric_limits<T>::quiet_NaN());
  out.data = host ? host->storage.data() : is(M::out_overlaps_bias) ? bias_of_t->data() : out.storage.data();
  T* const lse_data = is(M::lse_overlaps_out) ? out.data : is(M::lse_overlaps_q) ? Q.storage.data() : lse_storage.data();
  const bool out_is_own = out.data == out.storage.data();

  // ---- options
  sdpa::Options base;
  masks.apply(base);
  base.scale = decode_scale(in);
  if (is(M::scale_zero)) base.scale = 0.0;
  if (is(M::scale_negative)) base.scale = -1.0;
  if (is(M::scale_infinite)) base.scale = std::numeric_limits<double>::infinity();
  if (is(M::scale_nan)) base.scale = std::numeric_limits<double>::quiet_NaN();
  if (is(M::scale_1e300)) base.scale = 1e300;  // inf as float: invalid for float only
  if (is(M::scale_1e_50)) base.scale = 1e-50;  // 0 as float: invalid for float only
  base.blocks = decode_blocks(in);
  if (is(M::blocks_negative)) (random.chance(0.5) ? base.blocks.query_rows : base.blocks.key_rows) = -1;
  const int threads = is(M::threads_negative) ? -1 : in.byte(kThreads) % 5;
  base.threads = threads;
  std::unique_ptr<bool[]> one_true(new bool[1]{true});
  if (is(M::batched_option)) {
    if (random.chance(0.5)) base.sequence_lengths = {0};
    else base.batch_mask = {one_true.get(), 1, 1, 1, nk, 0, 0, 0};
  }
  const sdpa::Kernel kernel = main_kernel(in);

  // ---- values, then poison where the contract says nothing is read
  const ValueRegime regime = fill_operands<T>(in, Q, K, V, masks.bias, random);

  // ---- what must happen
  const Expectation common = expect_common<T>(base, nq, nk, dk, K.cols, V.rows, masks);
  Expectation returned = common, into = common;
  if (Q.rows_share_memory() || K.rows_share_memory() || V.rows_share_memory()) {
    returned.either("an input Map's rows share memory (outer stride 0 or < cols): read as the Map says, or rejected");
    into.either(returned.reason);
  }
  if (out.rows != nq || out.cols != dv) into.invalid("out is not Nq x d_v");
  if (out.rows_overlap()) into.invalid(str("out's rows overlap (outer stride ", out.stride, " < d_v = ", out.cols, ")"));
  if (host && out.has_elements() && host->has_elements()) into.invalid(str("out overlaps ", host == &Q ? "Q" : host == &K ? "K" : "V"));
  if (is(M::out_overlaps_bias) && out.has_elements() && nk > 0) into.invalid("out overlaps options.bias");
  Expectation into_lse = into;
  if (lse_size != nq) into_lse.invalid("the LSE does not have Nq entries");
  if (is(M::lse_overlaps_out) && nq > 0) into_lse.invalid("the LSE overlaps out");
  if (is(M::lse_overlaps_q) && nq > 0) into_lse.invalid("the LSE overlaps Q");

  // ---- the oracle, when the shapes make sense
  const bool shapes_valid = common.expect != Expect::invalid;
  HeadProblem<T> problem;
  std::vector<RowExpectation> rows;
  const int poison = in.byte(kPoison);
  if (shapes_valid) {
    problem = head_problem<T>(Q, K, V, base.scale, dk, masks);
    // contract 2: a key no query may see is never read; contract 5: a row that sees nothing is
    // 0 whatever its query (rows that share memory, or an output inside an input, stay clean)
    poison_unread(poison, problem, Q, K, V, K.rows_own_memory() && V.rows_own_memory() && !host,
                  Q.rows_own_memory() && !host);
    for (Index i = 0; i < nq; ++i) rows.push_back(expect_row(problem, i));
  }

  context().input = str("2-D ", type_name<T>(), " Nq=", nq, " Nk=", nk, " d_k=", dk, " d_v=", dv, "; Q ", Q.describe(),
                        ", K ", K.describe(), ", V ", V.describe(), ", out ", out.rows, "x", out.cols, " stride ",
                        out.stride, out_is_own ? "" : " (in an input's memory)", ", LSE ", lse_size, "; ",
                        masks.describe(), "; scale ", base.scale ? str(*base.scale) : std::string("default"), "; blocks ",
                        base.blocks.query_rows, "x", base.blocks.key_rows, "; threads ", threads, "; main kernel ",
                        name(kernel), "; values ", regime.kind, " (specials ", regime.special_rate, "), poison ", poison,
                        "; mutation ", kMutation2DNames[int(mutation)]);
  if (verbose()) std::fprintf(stderr, "input: %s\n", context().input.c_str());
  if (verbosity() >= 2 && shapes_valid) {
    const auto dump = [](const char* name, const Strided<T>& m) {
      std::fprintf(stderr, "%s =\n", name);
      for (Index i = 0; i < m.rows; ++i) {
        for (Index j = 0; j < m.cols; ++j) std::fprintf(stderr, " %.9g", double(m(i, j)));
        std::fprintf(stderr, "\n");
      }
    };
    dump("Q", problem.q);
    dump("K", problem.k);
    dump("V", problem.v);
    std::fprintf(stderr, "visible, bias (as T) =\n");
    for (Index i = 0; i < nq; ++i) {
      for (Index j = 0; j < nk; ++j)
        std::fprintf(stderr, " %d:%.9g", problem.visible[std::size_t(i * nk + j)], double(problem.bias[std::size_t(i * nk + j)]));
      std::fprintf(stderr, "\n");
    }
  }

  // ---- the calls
  Memory memory;
  watch_inputs(memory, Q, K, V, masks);
  memory.add("out", out.storage);
  memory.add("lse", lse_storage);
  std::optional<bool> either_outcome;  // calls that may be rejected must all agree
  const auto checked = [&](const std::string& what, const Expectation& expect, bool writes_out, bool writes_lse,
                           const auto& call) {
    if (out_is_own) std::fill(out.storage.begin(), out.storage.end(), sentinel<T>());
    if (lse_data == lse_storage.data()) std::fill(lse_storage.begin(), lse_storage.end(), sentinel<T>());
    calling(what + " [" + expect.describe() + "]");
    memory.snapshot();
    const Outcome o = attempt(call);
    judge_call(expect, o, either_outcome, memory, [&] {
      std::vector<std::pair<const void*, std::size_t>> writable;
      if (writes_out) add_elements(writable, static_cast<const T*>(out.data), out.offsets());
      if (writes_lse)
        for (Index i = 0; i < lse_size; ++i) writable.emplace_back(lse_data + i, sizeof(T));
      return writable;
    });
    return o;
  };
  const auto lse_map = [&] { return Eigen::Map<sdpa::Vector<T>>(lse_data, lse_size); };
  const auto into_with_lse = [&](const sdpa::Options& options) {
    return [&, options] {
      Q.visit([&](const auto& q) {
        K.visit([&](const auto& k) {
          V.visit([&](const auto& v) { sdpa::attention_into(q, k, v, out.map(), lse_map(), options); });
        });
      });
    };
  };
  const auto lse_values = [&] { return std::vector<T>(lse_data, lse_data + std::max<Index>(0, lse_size)); };

  // Every path, 1 thread: attention_into with an LSE.
  struct PathResult {
    sdpa::Kernel kernel;
    bool ok;
    std::vector<T> out, lse;
  };
  std::vector<PathResult> results;
  for (const sdpa::Kernel path : kPaths) {
    sdpa::Options options = base;
    options.kernel = path;
    options.threads = threads < 0 ? threads : 1;
    const Outcome o = checked(str("attention_into(Q, K, V, out, lse), ", name(path), ", 1 thread"), into_lse, true, true,
                              into_with_lse(options));
    results.push_back({path, o.ok, out.gather(), lse_values()});
  }
  for (const PathResult& r : results)
    FUZZ_CHECK("7.paths_disagree", r.ok == results.front().ok, name(r.kernel), (r.ok ? " succeeded" : " threw"),
               " but ", name(results.front().kernel), (results.front().ok ? " succeeded" : " threw"));
  const bool check_values = shapes_valid && into_lse.expect != Expect::invalid;
  if (check_values && results.front().ok) {
    calling("the results of attention_into(Q, K, V, out, lse) on every path, 1 thread (the detail names the path)");
    std::vector<HeadResult<T>> heads;
    for (const PathResult& r : results)
      heads.push_back({name(r.kernel), Strided<T>{r.out.data(), nq, dv, dv, 1}, r.lse.data()});
    for (const HeadResult<T>& h : heads) check_head(h, problem, rows, "");
    check_paths_agree(heads, problem, rows, "");
  }

  // (c) The same path with more threads and with user thread pools: the same bits.
  if (out_is_own && results.front().ok)
    for (const PathResult& r : results) {
      for (const ThreadVariant& variant : thread_variants(r.kernel == kernel, threads)) {
        const sdpa::Options options = variant.applied_to(base, r.kernel);
        const std::string what = str("attention_into(Q, K, V, out, lse), ", name(r.kernel), ", ", variant.name);
        if (!checked(what, into_lse, true, true, into_with_lse(options)).ok) continue;
        check_same_bits(what + ": out", r.out.data(), out.gather().data(), r.out.size() * sizeof(T));
        check_same_bits(what + ": lse", r.lse.data(), lse_values().data(), r.lse.size() * sizeof(T));
      }
    }

  // The input's main kernel through one more call form.
  sdpa::Options options = base;
  options.kernel = kernel;
  options.threads = threads;
  if (in.pick(kApi, 2) == 1) {
    RowMatrix<T> result;
    const Outcome o = checked(str("attention(Q, K, V), ", name(kernel)), returned, false, false, [&] {
      Q.visit([&](const auto& q) {
        K.visit([&](const auto& k) { V.visit([&](const auto& v) { result = sdpa::attention(q, k, v, options); }); });
      });
    });
    if (o.ok && shapes_valid && returned.expect != Expect::invalid)
      check_head(HeadResult<T>{"attention()", Strided<T>{result.data(), result.rows(), result.cols(), result.cols(), 1}, nullptr},
                 problem, rows, "");
  } else {
    const Outcome o = checked(str("attention_into(Q, K, V, out), ", name(kernel)), into, true, false, [&] {
      Q.visit([&](const auto& q) {
        K.visit([&](const auto& k) { V.visit([&](const auto& v) { sdpa::attention_into(q, k, v, out.map(), options); }); });
      });
    });
    if (o.ok && shapes_valid && into.expect != Expect::invalid) {
      const std::vector<T> values = out.gather();
      check_head(HeadResult<T>{"attention_into without LSE", Strided<T>{values.data(), nq, dv, dv, 1}, nullptr}, problem,
                 rows, "");
    }
  }
}

}  // namespace sdpa_fuzz
