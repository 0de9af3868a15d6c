// tests/fuzz/scenario_layer.hpp - scenario 3: generation state. SelfAttention<float>::random,
// a KVCache, a prompt fed by step() and then one token per step, forward() over the same tokens
// (self-attention, causal) and over a memory (cross-attention), all against a long double
// reference of the layer; the cache's contents after every step; the same steps on threads; and
// the cache's own API (append, keys, values, length, clear) with its errors.
#pragma once

#include "call_options.hpp"
#include "checks.hpp"
#include "finding.hpp"
#include "oracle.hpp"
#include "scenario_2d.hpp"
#include "thread_pools.hpp"
#include "values.hpp"

#include <sdpa/sdpa.hpp>

#include <optional>

namespace sdpa_fuzz {

enum class MutationLayer {
  none, random_d_model_indivisible, random_heads_zero, random_kv_not_divisor, random_d_model_negative,
  cache_size_zero, cache_size_negative, cache_wrong_kv_heads, cache_wrong_head_dim,
  step_exceeds_capacity, step_bad_sequence, step_x_cols, step_batched_option, step_mask_shape, step_scale_invalid,
  append_wrong_cols, append_rows_mismatch, append_exceeds_capacity, append_bad_sequence,
  keys_head_out_of_range, values_head_out_of_range, length_bad_sequence, forward_x_cols, forward_memory_cols, count
};
inline const char* const kMutationLayerNames[] = {
    "none", "random_d_model_indivisible", "random_heads_zero", "random_kv_not_divisor", "random_d_model_negative",
    "cache_size_zero", "cache_size_negative", "cache_wrong_kv_heads", "cache_wrong_head_dim", "step_exceeds_capacity",
    "step_bad_sequence", "step_x_cols", "step_batched_option", "step_mask_shape", "step_scale_invalid",
    "append_wrong_cols", "append_rows_mismatch", "append_exceeds_capacity", "append_bad_sequence",
    "keys_head_out_of_range", "values_head_out_of_range", "length_bad_sequence", "forward_x_cols",
    "forward_memory_cols"};

/// A matrix of long double values with a rounding bound for each (what float may be off by).
struct Bounded {
  Index rows = 0, cols = 0;
  std::vector<Wide> value, error;
  Bounded(Index r, Index c) : rows(r), cols(c), value(std::size_t(r * c), 0), error(std::size_t(r * c), 0) {}
  Wide& at(Index i, Index j) { return value[std::size_t(i * cols + j)]; }
  Wide& err(Index i, Index j) { return error[std::size_t(i * cols + j)]; }
  Wide at(Index i, Index j) const { return value[std::size_t(i * cols + j)]; }
  Wide err(Index i, Index j) const { return error[std::size_t(i * cols + j)]; }
};

/// X W + b with its bound: a (d_in + 1)-term dot product, gamma(d_in + 1) of the terms' size,
/// plus the inputs' own errors carried through W.
inline Bounded project_bounded(const Bounded& X, const RowMatrix<float>& W, const sdpa::RowVector<float>& b) {
  using P = Precision<float>;
  Bounded Y(X.rows, W.cols());
  for (Index i = 0; i < X.rows; ++i)
    for (Index j = 0; j < W.cols(); ++j) {
      Wide sum = b.size() ? Wide(b(j)) : 0, magnitude = b.size() ? std::fabs(Wide(b(j))) : 0, carried = 0;
      for (Index m = 0; m < X.cols; ++m) {
        sum += X.at(i, m) * Wide(W(m, j));
        magnitude += std::fabs(X.at(i, m) * Wide(W(m, j)));
        carried += X.err(i, m) * std::fabs(Wide(W(m, j)));
      }
      Y.at(i, j) = sum;
      Y.err(i, j) = P::gamma(X.cols + 1) * magnitude + carried;
    }
  return Y;
}

/// The layer in long double: queries from X (nq rows), keys and values from S (ns rows), query i
/// seeing key j <= i + ns - nq when causal. Returns the output with its bound; `tame[i]` is false
/// where the scores' errors make softmax ill-conditioned (then no bound is claimed).
inline Bounded layer_reference(const sdpa::SelfAttention<float>& layer, const RowMatrix<float>& X,
                               const RowMatrix<float>& S, bool causal, std::vector<char>& tame) {
  using P = Precision<float>;
  const auto& w = layer.weights();
  const Index H = layer.heads(), group = layer.heads() / layer.kv_heads(), dk = layer.head_dim(),
              dv = layer.value_head_dim(), nq = X.rows(), ns = S.rows();
  const auto exact = [](const RowMatrix<float>& m) {
    Bounded b(m.rows(), m.cols());
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) b.at(i, j) = m(i, j);
    return b;
  };
  const Bounded Q = project_bounded(exact(X), w.Wq, w.bq), K = project_bounded(exact(S), w.Wk, w.bk),
                V = project_bounded(exact(S), w.Wv, w.bv);
  const Wide scale = Wide(float(1.0 / std::sqrt(double(dk)))), eps = P::eps();
  Bounded O(nq, H * dv);
  tame.assign(std::size_t(nq), 1);
  for (Index h = 0; h < H; ++h) {
    const Index kv = h / group;
    for (Index i = 0; i < nq; ++i) {
      std::vector<Wide> s, ds;
      const Index visible = causal ? std::clamp<Index>(i + ns - nq + 1, 0, ns) : ns;
      for (Index j = 0; j < visible; ++j) {
        Wide dot = 0, magnitude = 0, carried = 0;
        for (Index e = 0; e < dk; ++e) {
          const Wide q = Q.at(i, h * dk + e), k = K.at(j, kv * dk + e), eq = Q.err(i, h * dk + e), ek = K.err(j, kv * dk + e);
          dot += q * k;
          magnitude += std::fabs(q * k);
          carried += eq * std::fabs(k) + std::fabs(q) * ek + eq * ek;
        }
        s.push_back(scale * dot);
        ds.push_back(scale * carried + P::gamma(dk + 4) * scale * magnitude);
      }
      if (s.empty()) continue;  // sees nothing: exactly 0
      const Wide m = *std::max_element(s.begin(), s.end()), ds_max = *std::max_element(ds.begin(), ds.end());
      if (2 * (ds_max + 8 * eps) > 0.5L) tame[std::size_t(i)] = 0;
      Wide sum = 0;
      for (const Wide x : s) sum += std::exp(x - m);
      const Wide relative = std::expm1(2 * (ds_max + 8 * eps)) + 4 * Wide(s.size()) * eps + 2 * P::gamma(Index(s.size()) + 2) + eps;
      for (Index c = 0; c < dv; ++c) {
        Wide o = 0, v_max = 0, ev_max = 0;
        for (std::size_t j = 0; j < s.size(); ++j) {
          const Wide v = V.at(Index(j), kv * dv + c);
          o += std::exp(s[j] - m) / sum * v;
          v_max = std::max(v_max, std::fabs(v));
          ev_max = std::max(ev_max, V.err(Index(j), kv * dv + c));
        }
        O.at(i, h * dv + c) = o;
        O.err(i, h * dv + c) = relative * v_max + ev_max;  // as in oracle.hpp, plus V's own error
      }
    }
  }
  if (w.Wo.size() == 0) return O;
  return project_bounded(O, w.Wo, w.bo);
}

/// Compares a layer's output with the reference, row by row where the reference claims a bound
/// (`tame`: softmax well conditioned; `tame_input`: every input row the output row depends on
/// is finite with |x| <= 1e3).
inline void check_layer(const char* what, const RowMatrix<float>& got, const Bounded& expected,
                        const std::vector<char>& tame, const std::vector<char>& tame_input) {
  FUZZ_CHECK("layer.shape", got.rows() == expected.rows && got.cols() == expected.cols, what, " is ", got.rows(), "x",
             got.cols(), ", expected ", expected.rows, "x", expected.cols);
  if (got.rows() != expected.rows || got.cols() != expected.cols) return;
  for (Index i = 0; i < got.rows(); ++i) {
    if (!tame[std::size_t(i)] || !tame_input[std::size_t(i)]) continue;
    for (Index j = 0; j < got.cols(); ++j) {
      const Wide tolerance = 2 * expected.err(i, j) + 4 * Precision<float>::min_normal();
      FUZZ_CHECK("layer.reference", std::fabs(Wide(got(i, j)) - expected.at(i, j)) <= tolerance, what, ": (", i, ", ", j,
                 ") = ", got(i, j), " but the reference is ", double(expected.at(i, j)), " (tolerance ", double(tolerance), ")");
    }
  }
}

/// What a KVCache shows through its API: each sequence's length and cached keys and values.
struct CacheState {
  std::vector<Index> lengths;
  std::vector<std::vector<float>> keys, values;
  bool operator==(const CacheState& o) const { return lengths == o.lengths && keys == o.keys && values == o.values; }
};
inline std::vector<float> rows_of(const sdpa::MatrixView<const float>& m) {
  std::vector<float> v;
  for (Index i = 0; i < m.rows; ++i)
    for (Index j = 0; j < m.cols; ++j) v.push_back(m(i, j));
  return v;
}
inline CacheState capture(const sdpa::KVCache<float>& cache) {
  CacheState s;
  for (Index b = 0; b < cache.batch(); ++b) {
    s.lengths.push_back(cache.length(b));
    for (Index h = 0; h < cache.kv_heads(); ++h) {
      s.keys.push_back(rows_of(cache.keys(b, h)));
      s.values.push_back(rows_of(cache.values(b, h)));
    }
  }
  return s;
}

inline void run_layer(const ByteReader& in) {
  using M = MutationLayer;
  using Mat = RowMatrix<float>;
  Random random(in.seed());
  const Index H = in.range(kHeads, 1, 4);
  std::vector<Index> divisors;
  for (Index d = 1; d <= H; ++d)
    if (H % d == 0) divisors.push_back(d);
  const Index Hkv = divisors[std::size_t(in.byte(kKvHeads) % divisors.size())];
  const Index d_head = 1 + (in.byte(kLayer) >> 3) % 8, d_model = H * d_head;
  const bool biases = in.byte(kLayer) & 1, projection = in.byte(kLayer) & 2, cross = in.byte(kLayer) & 4;
  const Index batch = in.range(kBatch, 1, 3), capacity = 1 + in.byte(kKeys) % 40;
  // gen.layer_zero_tokens off: the prompt has a token (a 0-token step offsets a null pointer).
  const Index prompt = std::max<Index>(in.byte(kSplit) % (capacity + 1), ignored("gen.layer_zero_tokens") ? 1 : 0), steps = std::min<Index>(in.byte(kRows) % 8, capacity - prompt);
  const M mutation = decode_mutation<M>(in, kMutationLayerNames);
  const auto is = [&](M m) { return mutation == m; };
  Index sequence = in.byte(kQueries) % batch;
  if (is(M::step_bad_sequence)) sequence = random.chance(0.5) ? -1 : batch;
  sdpa::Options options;
  options.kernel = main_kernel(in);
  options.blocks = decode_blocks(in);
  options.threads = in.byte(kThreads) % 5;
  const ValueRegime regime = ValueRegime::from(in);
  context().input = str("layer d_model=", d_model, " heads=", H, " kv_heads=", Hkv, " d_head=", d_head, " biases ", biases,
                        " Wo ", projection, " cross ", cross, "; cache batch ", batch, " capacity ", capacity, "; prompt ",
                        prompt, " + ", steps, " steps on sequence ", sequence, "; kernel ", name(options.kernel), " blocks ",
                        options.blocks.query_rows, "x", options.blocks.key_rows, " threads ", options.threads, "; values ",
                        regime.kind, "; mutation ", kMutationLayerNames[int(mutation)]);
  if (verbose()) std::fprintf(stderr, "input: %s\n", context().input.c_str());

  // ---- the layer
  Index r_model = d_model, r_heads = H, r_kv = Hkv;
  Expectation layer_expect;
  if (is(M::random_d_model_indivisible)) {
    r_heads = std::max<Index>(H, 2);
    r_model = r_heads * d_head + 1;
    layer_expect.invalid("d_model does not split into the heads");
  }
  if (is(M::random_heads_zero)) r_heads = 0, layer_expect.invalid("0 heads");
  if (is(M::random_kv_not_divisor)) r_kv = H + 1, layer_expect.invalid("kv_heads does not divide heads");
  if (is(M::random_d_model_negative)) r_model = -d_model, layer_expect.invalid("a negative d_model");
  std::optional<sdpa::SelfAttention<float>> layer;
  calling(str("SelfAttention<float>::random(", r_model, ", ", r_heads, ", seed, ", biases, ", ", projection, ", ", r_kv, ")"));
  judge(layer_expect, attempt([&] { layer.emplace(sdpa::SelfAttention<float>::random(r_model, r_heads, in.seed(), biases, projection, r_kv)); }));
  if (!layer || layer_expect.expect == Expect::invalid) return;

  // ---- the cache
  Index c_batch = batch, c_kv = Hkv, c_dk = d_head, c_dv = d_head, c_capacity = capacity;
  Expectation cache_expect;
  if (is(M::cache_size_zero) || is(M::cache_size_negative)) {
    Index* sizes[] = {&c_batch, &c_kv, &c_dk, &c_dv, &c_capacity};
    *sizes[random.below(5)] = is(M::cache_size_zero) ? 0 : -1;
    cache_expect.invalid("a cache size below 1");
  }
  if (is(M::cache_wrong_kv_heads)) c_kv = Hkv + 1;
  if (is(M::cache_wrong_head_dim)) c_dk = d_head + 1;
  const auto make_cache = [&](std::optional<sdpa::KVCache<float>>& cache, const Expectation& expect) {
    calling(str("KVCache<float>(", c_batch, ", ", c_kv, ", ", c_dk, ", ", c_dv, ", ", c_capacity, ")"));
    judge(expect, attempt([&] { cache.emplace(c_batch, c_kv, c_dk, c_dv, c_capacity); }));
    return cache.has_value() && expect.expect != Expect::invalid;
  };
  std::optional<sdpa::KVCache<float>> cache;
  if (!make_cache(cache, cache_expect)) return;

  // ---- inputs
  const Index total = prompt + steps, memory_rows = 1 + in.byte(kValueDim) % 20;
  Mat X(std::max<Index>(total, capacity + 1), d_model), memory(memory_rows, d_model);
  std::vector<Index> x_off(std::size_t(X.size())), m_off(std::size_t(memory.size()));
  for (std::size_t i = 0; i < x_off.size(); ++i) x_off[i] = Index(i);
  for (std::size_t i = 0; i < m_off.size(); ++i) m_off[i] = Index(i);
  fill_values(X.data(), x_off, regime, random);
  fill_values(memory.data(), m_off, regime, random);
  apply_pokes(in, {{X.data(), false, &x_off}, {memory.data(), false, &m_off}});
  const auto tame_rows = [](const Mat& m) {
    std::vector<char> t(std::size_t(m.rows()), 1);
    for (Index i = 0; i < m.rows(); ++i)
      for (Index j = 0; j < m.cols(); ++j) t[std::size_t(i)] = t[std::size_t(i)] && tame_value(Wide(m(i, j)));
    return t;
  };
  // Token t of a causal pass reads tokens 0..t: it is tame when all of them are.
  std::vector<char> x_tame = tame_rows(X);
  for (std::size_t t = 1; t < x_tame.size(); ++t) x_tame[t] = x_tame[t] && x_tame[t - 1];
  const std::vector<char> memory_tame = tame_rows(memory), x_row_tame = tame_rows(X);

  // ---- steps: the prompt, then one token at a time
  Expectation step_expect;
  sdpa::Options step_options = options;
  Mat X_wide = Mat::Zero(std::max<Index>(prompt, 1), d_model + 1);
  std::unique_ptr<bool[]> wrong_mask(new bool[std::size_t(capacity + 2)]());
  if (is(M::cache_wrong_kv_heads) || is(M::cache_wrong_head_dim)) step_expect.invalid("the cache does not fit the layer");
  if (is(M::step_exceeds_capacity)) step_expect.invalid("more tokens than the cache holds");
  if (is(M::step_bad_sequence)) step_expect.invalid(str("sequence ", sequence, " is outside [0, batch)"));
  if (is(M::step_x_cols)) step_expect.invalid("X_new does not have d_model columns");
  if (is(M::step_batched_option)) step_options.sequence_lengths = {1}, step_expect.invalid("a batched option");
  if (is(M::step_mask_shape)) {
    step_options.mask = sdpa::MatrixView<const bool>(wrong_mask.get(), 1, prompt + 1, 0);
    step_expect.invalid("options.mask is not n x (length + n)");
  }
  if (is(M::step_scale_invalid)) step_options.scale = 0.0, step_expect.invalid("options.scale is 0");
  const bool step_mutated = step_expect.expect == Expect::invalid;
  const auto run_steps = [&](sdpa::KVCache<float>& c, const sdpa::Options& o, std::vector<Mat>& outputs, bool check_cache) {
    Index start = 0;
    for (Index n_step = 0; n_step <= steps; ++n_step) {
      const Index n = n_step == 0 ? (is(M::step_exceeds_capacity) ? capacity + 1 : prompt) : 1;
      const CacheState before = capture(c);
      Mat Y;
      const Expectation& expect = n_step == 0 ? step_expect : Expectation{};
      calling(str("SelfAttention::step(", n, " tokens, cache, sequence ", sequence, ") at length ", start, " [",
                  expect.describe(), "]"));
      const Outcome outcome = attempt([&] {
        if (n_step == 0 && is(M::step_x_cols)) Y = layer->step(X_wide.topRows(prompt), c, sequence, o);
        else Y = layer->step(X.middleRows(start, n), c, sequence, o);
      });
      judge(expect, outcome);
      if (!outcome.ok) {
        FUZZ_CHECK("a.untouched", capture(c) == before, "step threw std::invalid_argument but changed the cache");
        return false;
      }
      if (expect.expect == Expect::invalid) return false;
      if (check_cache) {  // the step appended exactly these tokens' keys and values
        const CacheState after = capture(c);
        const Mat keys = sdpa::project(X.middleRows(start, n), layer->weights().Wk, layer->weights().bk);
        const Mat values = sdpa::project(X.middleRows(start, n), layer->weights().Wv, layer->weights().bv);
        for (Index b = 0; b < c.batch(); ++b) {
          FUZZ_CHECK("kv.contents", after.lengths[std::size_t(b)] == before.lengths[std::size_t(b)] + (b == sequence ? n : 0),
                     "after step, sequence ", b, " holds ", after.lengths[std::size_t(b)], " tokens");
          for (Index h = 0; h < c.kv_heads(); ++h) {
            const std::size_t bh = std::size_t(b * c.kv_heads() + h);
            if (b != sequence) {
              FUZZ_CHECK("kv.contents", after.keys[bh] == before.keys[bh] && after.values[bh] == before.values[bh],
                         "step on sequence ", sequence, " changed sequence ", b);
              continue;
            }
            const sdpa::MatrixView<const float> k = c.keys(b, h), v = c.values(b, h);
            for (Index t = 0; t < n; ++t) {
              for (Index f = 0; f < d_head; ++f)
                FUZZ_CHECK("kv.contents", std::memcmp(&k(start + t, f), &keys(t, h * d_head + f), sizeof(float)) == 0,
                           "cache.keys(", b, ", ", h, ")(", start + t, ", ", f, ") = ", k(start + t, f),
                           " but the step's projection is ", keys(t, h * d_head + f));
              for (Index f = 0; f < d_head; ++f)
                FUZZ_CHECK("kv.contents", std::memcmp(&v(start + t, f), &values(t, h * d_head + f), sizeof(float)) == 0,
                           "cache.values(", b, ", ", h, ")(", start + t, ", ", f, ") = ", v(start + t, f),
                           " but the step's projection is ", values(t, h * d_head + f));
            }
          }
        }
      }
      outputs.push_back(Y);
      start += n;
    }
    return true;
  };
  std::vector<Mat> outputs;
  const bool stepped = run_steps(*cache, step_options, outputs, true);

  // ---- against the reference: the steps, forward over the same tokens, cross-attention
  const Mat tokens = X.topRows(total);
  std::vector<char> tame;
  if (stepped && !step_mutated) {
    const Bounded expected = layer_reference(*layer, tokens, tokens, true, tame);
    Mat stacked(total, layer->weights().Wo.size() ? layer->weights().Wo.cols() : H * d_head);
    Index row = 0;
    for (const Mat& Y : outputs) {
      FUZZ_CHECK("layer.shape", Y.cols() == stacked.cols(), "a step returned ", Y.cols(), " columns, expected ", stacked.cols());
      if (Y.cols() != stacked.cols()) return;
      stacked.middleRows(row, Y.rows()) = Y;
      row += Y.rows();
    }
    check_layer("step outputs", stacked, expected, tame, x_tame);

    // The same steps on a fresh cache, on user threads: the same bits.
    std::optional<sdpa::KVCache<float>> cache2;
    if (make_cache(cache2, {})) {
      sdpa::Options threaded = step_options;
      threaded.parallel_for = std_threads(2);
      std::vector<Mat> outputs2;
      run_steps(*cache2, threaded, outputs2, false);
      for (std::size_t i = 0; i < outputs.size() && i < outputs2.size(); ++i)
        check_same_bits(str("step ", i, " on 2 std::threads"), outputs[i].data(), outputs2[i].data(),
                        std::size_t(outputs[i].size()) * sizeof(float));
    }
  }
  sdpa::Options causal = options;
  causal.causal = true;
  Expectation forward_expect;
  Mat X_bad = Mat::Zero(total, d_model + 1);
  if (is(M::forward_x_cols)) forward_expect.invalid("X does not have d_model columns");
  Mat Y;
  calling(str("SelfAttention::forward(X, causal) [", forward_expect.describe(), "]"));
  const Outcome forward = attempt([&] { Y = is(M::forward_x_cols) ? layer->forward(X_bad, causal) : layer->forward(tokens, causal); });
  judge(forward_expect, forward);
  if (forward.ok && forward_expect.expect == Expect::valid) {
    const Bounded expected = layer_reference(*layer, tokens, tokens, true, tame);
    check_layer("forward(X), causal", Y, expected, tame, x_tame);
    struct Variant {
      const char* label;
      int threads;
      sdpa::ParallelFor pool;
    };
    for (const Variant& variant : {Variant{"3 threads", 3, {}}, Variant{"scrambled serial pool", 1, scrambled_serial()}}) {
      sdpa::Options o = causal;
      o.threads = variant.threads;
      o.parallel_for = variant.pool;
      Mat Y2;
      calling(str("SelfAttention::forward(X, causal), ", variant.label));
      if (attempt([&] { Y2 = layer->forward(tokens, o); }).ok)
        check_same_bits(str("forward on ", variant.label), Y.data(), Y2.data(), std::size_t(Y.size()) * sizeof(float));
    }
  }
  if (cross || is(M::forward_memory_cols)) {
    Expectation cross_expect;
    Mat memory_bad = Mat::Zero(memory_rows, d_model + 1);
    if (is(M::forward_memory_cols)) cross_expect.invalid("memory does not have d_model columns");
    calling(str("SelfAttention::forward(X, memory) [", cross_expect.describe(), "]"));
    const Outcome o = attempt([&] { Y = layer->forward(tokens, is(M::forward_memory_cols) ? memory_bad : memory, options); });
    judge(cross_expect, o);
    bool memory_is_tame = true;
    for (const char t : memory_tame) memory_is_tame = memory_is_tame && t;
    if (o.ok && cross_expect.expect == Expect::valid && memory_is_tame) {
      const Bounded expected = layer_reference(*layer, tokens, memory, false, tame);
      check_layer("forward(X, memory)", Y, expected, tame, x_row_tame);
    }
  }

  // ---- the cache's own API, on a fresh cache
  std::optional<sdpa::KVCache<float>> kv;
  if (!make_cache(kv, {})) return;
  Index n = 1 + random.below(c_capacity), s = in.byte(kQueries) % c_batch;
  if (is(M::append_exceeds_capacity)) n = c_capacity + 1;
  if (is(M::append_bad_sequence)) s = random.chance(0.5) ? -1 : c_batch;
  Mat keys(n, c_kv * c_dk + (is(M::append_wrong_cols) ? 1 : 0)), values(n + (is(M::append_rows_mismatch) ? 1 : 0), c_kv * c_dv);
  for (Index i = 0; i < keys.size(); ++i) keys.data()[i] = float(random.uniform(-2, 2));
  for (Index i = 0; i < values.size(); ++i) values.data()[i] = float(random.uniform(-2, 2));
  Expectation append_expect;
  if (is(M::append_wrong_cols)) append_expect.invalid("keys do not have kv_heads x head_dim columns");
  if (is(M::append_rows_mismatch)) append_expect.invalid("keys and values differ in rows");
  if (is(M::append_exceeds_capacity)) append_expect.invalid("more tokens than the capacity");
  if (is(M::append_bad_sequence)) append_expect.invalid(str("sequence ", s, " is outside [0, batch)"));
  const CacheState before = capture(*kv);
  calling(str("KVCache::append(", s, ", ", keys.rows(), "x", keys.cols(), ", ", values.rows(), "x", values.cols(), ") [",
              append_expect.describe(), "]"));
  const Outcome appended = attempt([&] { kv->append(s, keys, values); });
  judge(append_expect, appended);
  if (!appended.ok) FUZZ_CHECK("a.untouched", capture(*kv) == before, "append threw std::invalid_argument but changed the cache");
  if (appended.ok && append_expect.expect == Expect::valid) {
    FUZZ_CHECK("kv.contents", kv->length(s) == n, "after appending ", n, " tokens the length is ", kv->length(s));
    for (Index h = 0; h < c_kv; ++h) {
      const sdpa::MatrixView<const float> k = kv->keys(s, h), v = kv->values(s, h);
      for (Index t = 0; t < n; ++t) {
        for (Index f = 0; f < c_dk; ++f)
          FUZZ_CHECK("kv.contents", k(t, f) == keys(t, h * c_dk + f), "keys(", s, ", ", h, ")(", t, ", ", f, ") = ", k(t, f),
                     " but ", keys(t, h * c_dk + f), " was appended");
        for (Index f = 0; f < c_dv; ++f)
          FUZZ_CHECK("kv.contents", v(t, f) == values(t, h * c_dv + f), "values(", s, ", ", h, ")(", t, ", ", f, ") = ",
                     v(t, f), " but ", values(t, h * c_dv + f), " was appended");
      }
    }
  }
  // Contract 7: indices outside the cache are std::invalid_argument (the views are not read).
  if (is(M::keys_head_out_of_range) || is(M::values_head_out_of_range) || is(M::length_bad_sequence)) {
    Expectation bad;
    bad.invalid("an index outside the cache");
    const Index head = random.chance(0.5) ? -1 : c_kv, bad_sequence = random.chance(0.5) ? -1 : c_batch;
    calling(str(is(M::keys_head_out_of_range) ? "KVCache::keys(0, " : is(M::values_head_out_of_range) ? "KVCache::values(0, " : "KVCache::length(",
                is(M::length_bad_sequence) ? bad_sequence : head, ")"));
    judge(bad, attempt([&] {
      if (is(M::keys_head_out_of_range)) (void)kv->keys(0, head);
      else if (is(M::values_head_out_of_range)) (void)kv->values(0, head);
      else (void)kv->length(bad_sequence);
    }));
  }
  calling("KVCache::clear(s), clear()");
  if (s >= 0 && s < c_batch) {
    kv->clear(s);
    FUZZ_CHECK("kv.contents", kv->length(s) == 0, "clear(", s, ") left ", kv->length(s), " tokens");
  }
  kv->clear();
  for (Index b = 0; b < c_batch; ++b) FUZZ_CHECK("kv.contents", kv->length(b) == 0, "clear() left tokens in sequence ", b);
}

}  // namespace sdpa_fuzz
