// tests/fuzz/scenario_batched.hpp - scenario 1: sdpa::attention on TensorViews. Batch 1-3,
// 1-4 query heads sharing key/value heads (grouped-query), Q, K and V in seven layouts or one
// fused [B, N, 3, H, d] buffer, the output in three; the 2-D masks (which apply to every head)
// or the batched ones (batch_mask, batch_bias, sequence_lengths, broadcast over sizes of 1).
// Every path with 1 thread, then more threads and user pools; each head against the oracle.
#pragma once

#include "call_options.hpp"
#include "checks.hpp"
#include "masks.hpp"
#include "memory.hpp"
#include "oracle.hpp"
#include "tensor_layout.hpp"
#include "thread_pools.hpp"
#include "values.hpp"

#include <sdpa/sdpa.hpp>

#include <optional>

namespace sdpa_fuzz {

enum class MutationBatched {
  none, k_batch, v_batch, out_batch, kv_heads_differ, heads_not_multiple, kv_heads_zero, k_features, v_tokens,
  out_features, out_tokens, out_heads, q_negative_stride, k_negative_stride, negative_tokens, zero_head_dim,
  zero_value_dim, out_token_stride_small, out_head_stride_zero, out_batch_stride_zero, out_overlaps_q, out_overlaps_v,
  out_negative_stride, batch_mask_shape, batch_bias_shape, mask_and_batch_mask, bias_and_batch_bias,
  lengths_and_sequence_lengths, sequence_lengths_count, sequence_length_out_of_range, scale_invalid, blocks_negative,
  threads_negative, mask_2d_shape, count
};
inline const char* const kMutationBatchedNames[] = {
    "none", "k_batch", "v_batch", "out_batch", "kv_heads_differ", "heads_not_multiple", "kv_heads_zero", "k_features",
    "v_tokens", "out_features", "out_tokens", "out_heads", "q_negative_stride", "k_negative_stride", "negative_tokens",
    "zero_head_dim", "zero_value_dim", "out_token_stride_small", "out_head_stride_zero", "out_batch_stride_zero",
    "out_overlaps_q", "out_overlaps_v", "out_negative_stride", "batch_mask_shape", "batch_bias_shape",
    "mask_and_batch_mask", "bias_and_batch_bias", "lengths_and_sequence_lengths", "sequence_lengths_count",
    "sequence_length_out_of_range", "scale_invalid", "blocks_negative", "threads_negative", "mask_2d_shape"};

/// Makes one stride negative, moving the start so that every element stays in the storage.
inline void negate_stride(TensorLayout& l) {
  Index* stride = l.tokens >= 2 ? &l.token_stride : l.heads >= 2 ? &l.head_stride : &l.batch_stride;
  const Index count = stride == &l.token_stride ? l.tokens : stride == &l.head_stride ? l.heads : l.batch;
  *stride = -std::max<Index>(1, std::abs(*stride));
  l.start += std::max<Index>(0, count - 1) * -*stride;
  l.name += ", a negative stride";
}

template <class T>
void run_batched(const ByteReader& in) {
  using M = MutationBatched;
  Random random(in.seed());
  const Index B = in.range(kBatch, 1, 3), H = in.range(kHeads, 1, 4);
  std::vector<Index> divisors;
  for (Index d = 1; d <= H; ++d)
    if (H % d == 0) divisors.push_back(d);
  const Index Hkv = divisors[std::size_t(in.byte(kKvHeads) % divisors.size())];
  // gen.batched_no_queries off: Nq >= 1 (an empty out can be refused for a false overlap).
  const Index nq = std::max<Index>(in.byte(kQueries) % 41, ignored("gen.batched_no_queries") ? 1 : 0), nk = in.byte(kKeys) % 41;
  const Index dk = in.range(kHeadDim, 1, 20), dv = in.range(kValueDim, 1, 20), pad = in.range(kPadding, 1, 5);
  const M mutation = decode_mutation<M>(in, kMutationBatchedNames);
  const auto is = [&](M m) { return mutation == m; };

  // ---- shapes (after the mutation), layouts, storage
  Index qB = B, kB = B, vB = B, oB = B, qH = H, kH = Hkv, vH = Hkv, oH = H;
  Index qN = nq, kN = nk, vN = nk, oN = nq, qD = dk, kD = dk, vD = dv, oD = dv;
  if (is(M::k_batch)) kB = B + 1;
  if (is(M::v_batch)) vB = B + 1;
  if (is(M::out_batch)) oB = B + 1;
  if (is(M::kv_heads_differ)) vH = Hkv + 1;
  if (is(M::heads_not_multiple)) kH = vH = H + 1;
  if (is(M::kv_heads_zero)) kH = vH = 0;
  if (is(M::k_features)) kD = dk + 1;
  if (is(M::v_tokens)) vN = nk + 1;
  if (is(M::out_features)) oD = dv + 1;
  if (is(M::out_tokens)) oN = nq + 1;
  if (is(M::out_heads)) oH = H + 1;
  if (is(M::negative_tokens)) qN = oN = -1;
  if (is(M::zero_head_dim)) qD = kD = 0;
  if (is(M::zero_value_dim)) vD = oD = 0;
  // (Not with a mutation that negates Q's or K's strides: sdpa::FusedQKV cannot lay that out.)
  const bool fused = in.pick(kLayoutQ, 8) == 7 && qN == kN && kN == vN && qD == vD && kD == vD && qH == kH &&
                     kH == vH && qB == kB && kB == vB && !is(M::q_negative_stride) && !is(M::k_negative_stride) &&
                     !ignored("gen.fused");
  const auto layout_kind = [&](Field f) { return in.pick(f, 8) % 7; };
  TensorLayout ql = make_layout(layout_kind(kLayoutQ), qB, qH, qN, qD, pad);
  TensorLayout kl = make_layout(layout_kind(kLayoutK), kB, kH, kN, kD, pad);
  TensorLayout vl = make_layout(layout_kind(kLayoutV), vB, vH, vN, vD, pad);
  if (fused) {  // [B, N, 3, H, d]: the harness's own reading of sdpa::FusedQKV
    const Index ts = 3 * qH * qD, bs = qN * ts;
    ql = {qB, qH, qN, qD, bs, qD, ts, 0, "fused"};
    kl = {qB, qH, qN, qD, bs, qD, ts, qH * qD, "fused"};
    vl = {qB, qH, qN, qD, bs, qD, ts, 2 * qH * qD, "fused"};
  }
  TensorLayout ol = make_layout(in.pick(kLayoutOut, 3), oB, oH, oN, oD, pad);
  if (is(M::q_negative_stride)) negate_stride(ql);
  if (is(M::k_negative_stride)) negate_stride(kl);
  if (is(M::out_negative_stride)) negate_stride(ol);
  if (is(M::out_token_stride_small)) ol.token_stride = oD >= 2 ? 1 + pad % (oD - 1) : 0;
  if (is(M::out_head_stride_zero)) ol.head_stride = 0;
  if (is(M::out_batch_stride_zero)) ol.batch_stride = 0;

  const T nan = std::numeric_limits<T>::quiet_NaN();
  std::vector<T> q_storage(std::size_t(std::max({ql.storage_size(), fused ? kl.storage_size() : 0, fused ? vl.storage_size() : 0})), nan);
  std::vector<T> k_storage(fused ? 0 : std::size_t(kl.storage_size()), nan), v_storage(fused ? 0 : std::size_t(vl.storage_size()), nan);
  std::vector<T> out_storage(std::size_t(ol.storage_size()), sentinel<T>());
  const bool out_in_q = is(M::out_overlaps_q), out_in_v = is(M::out_overlaps_v) && !fused;
  std::vector<T>& out_home = out_in_q ? q_storage : out_in_v ? v_storage : out_storage;
  if (out_home.size() < out_storage.size()) out_home.resize(out_storage.size(), nan);
  T* const q_data = q_storage.data();
  T* const k_data = fused ? q_storage.data() : k_storage.data();
  T* const v_data = fused ? q_storage.data() : v_storage.data();
  T* const out_data = out_home.data();
  const bool out_is_own = out_data == out_storage.data();

  // ---- masks: the 2-D ones (every head), the batched ones
  Masks masks = make_masks(in, std::max<Index>(qN, 0), kN, random);
  if (is(M::mask_2d_shape)) masks.mask = make_mask(1, nq == 0 ? 2 : nq + 1, nk, pad, 0.8, random);
  const double p_true = 1.0 - in.fraction(kMaskDensity);
  std::uint8_t mask_bits = in.byte(kBatchMask), bias_bits = in.byte(kBatchBias);
  if (nk == 0 && ignored("gen.batch_masks_without_keys")) mask_bits = bias_bits = 0;
  if (is(M::batch_mask_shape) || is(M::mask_and_batch_mask)) mask_bits |= 1;
  if (is(M::batch_bias_shape) || is(M::bias_and_batch_bias)) bias_bits |= 1;
  if (is(M::mask_and_batch_mask) && !masks.mask.present()) masks.mask = make_mask(1, nq, nk, pad, 0.8, random);
  if (is(M::bias_and_batch_bias) && !masks.bias.present) masks.bias = make_bias(1, nq, nk, 0, random);
  const Index mask_keys = is(M::batch_mask_shape) ? nk + 1 : nk, bias_keys = is(M::batch_bias_shape) ? nk + 1 : nk;
  const std::uint8_t bias_specials = in.byte(kBiasSpecials);
  const BatchTensor<bool> batch_mask =
      make_batch_tensor<bool>(mask_bits, B, H, nq, mask_keys, [&] { return random.chance(p_true); });
  const BatchTensor<float> batch_bias = make_batch_tensor<float>(
      bias_bits, B, H, nq, bias_keys, [&] { return float(bias_entry(bias_specials, false, random)); });
  std::vector<Index> sequence_lengths;
  switch (in.pick(kSequenceLengths, 3)) {
    case 1: for (Index b = 0; b < B; ++b) sequence_lengths.push_back(random.below(nk + 1)); break;
    case 2: sequence_lengths.assign(std::size_t(B), nk); break;
    default: break;
  }
  if (is(M::lengths_and_sequence_lengths)) {
    if (masks.key_lengths.empty()) masks.key_lengths = {nk};
    if (sequence_lengths.empty()) sequence_lengths.assign(std::size_t(B), nk);
  }
  if (is(M::sequence_lengths_count)) sequence_lengths.assign(std::size_t(B + 1), 0);
  if (is(M::sequence_length_out_of_range)) {
    if (sequence_lengths.empty()) sequence_lengths.assign(std::size_t(B), 0);
    sequence_lengths[std::size_t(random.below(B))] = random.chance(0.5) ? -1 : nk + 1;
  }

  // ---- options
  sdpa::Options base;
  masks.apply(base);
  if (batch_mask.present()) base.batch_mask = batch_mask.view();
  if (batch_bias.present()) base.batch_bias = batch_bias.view();
  base.sequence_lengths = sequence_lengths;
  base.scale = decode_scale(in);
  if (is(M::scale_invalid)) {
    static constexpr double kBad[] = {0.0, -1.0, std::numeric_limits<double>::infinity(),
                                      std::numeric_limits<double>::quiet_NaN(), 1e300};
    base.scale = kBad[random.below(5)];
  }
  base.blocks = decode_blocks(in);
  if (is(M::blocks_negative)) (random.chance(0.5) ? base.blocks.query_rows : base.blocks.key_rows) = -1;
  const int threads = is(M::threads_negative) ? -1 : in.byte(kThreads) % 5;
  base.threads = threads;
  const sdpa::Kernel kernel = main_kernel(in);

  // ---- values
  const ValueRegime regime = ValueRegime::from(in);
  const std::vector<Index> q_off = ql.offsets(), k_off = kl.offsets(), v_off = vl.offsets(), bias_off = masks.bias.offsets();
  std::vector<Index> batch_bias_off;
  for (std::size_t i = 0; i < batch_bias.size; ++i) batch_bias_off.push_back(Index(i));
  fill_values(q_data, q_off, regime, random);
  fill_values(k_data, k_off, regime, random);
  fill_values(v_data, v_off, regime, random);
  constexpr bool kDouble = std::is_same_v<T, double>;
  apply_pokes(in, {{q_data, kDouble, &q_off}, {k_data, kDouble, &k_off}, {v_data, kDouble, &v_off},
                   {masks.bias.storage(), masks.bias.is_double, &bias_off, true}, {batch_bias.data.get(), false, &batch_bias_off, true}});

  // ---- what must happen
  Expectation expect;
  if (ql.negative() || kl.negative() || vl.negative() || ol.negative()) expect.invalid("a negative size or stride");
  if (kB != qB || vB != qB || oB != qB) expect.invalid("batch sizes differ");
  if (kH != vH) expect.invalid("K and V have different head counts");
  if (kH == 0 || (kH > 0 && qH % kH != 0)) expect.invalid("query heads are no multiple of key/value heads");
  if (oH != qH || oN != qN || oD != vD) expect.invalid("out is not [B, H, Nq, d_v]");
  if (qD != kD) expect.invalid("Q and K head dims differ");
  if (qD == 0) expect.invalid("d_k is 0");
  if (vN != kN) expect.invalid("V and K token counts differ");
  if (vD == 0) expect.invalid("d_v is 0");
  sdpa::Options two_d = base;  // the rules every call shares; the batched options are checked below
  two_d.batch_mask = {};
  two_d.batch_bias = {};
  two_d.sequence_lengths.clear();
  const Expectation shared = expect_common<T>(two_d, qN, kN, qD, kD, vN, masks);
  if (shared.expect == Expect::invalid) expect.invalid(shared.reason);
  if (shared.expect == Expect::either) expect.either(shared.reason);
  const auto bad_broadcast = [&](const TensorLayout& l) {
    return (l.batch != 1 && l.batch != qB) || (l.heads != 1 && l.heads != qH) || (l.tokens != 1 && l.tokens != qN) || l.features != kN;
  };
  if (batch_mask.present() && masks.mask.present()) expect.invalid("options.mask and options.batch_mask together");
  if (batch_mask.present() && bad_broadcast(batch_mask.layout)) expect.invalid("options.batch_mask has a bad shape");
  if (batch_bias.present() && masks.bias.present) expect.invalid("options.bias and options.batch_bias together");
  if (batch_bias.present() && bad_broadcast(batch_bias.layout)) expect.invalid("options.batch_bias has a bad shape");
  if (!sequence_lengths.empty()) {
    if (!masks.key_lengths.empty()) expect.invalid("key_lengths and sequence_lengths together");
    if (Index(sequence_lengths.size()) != qB) expect.invalid("sequence_lengths has no entry per sequence");
    for (const Index l : sequence_lengths)
      if (l < 0 || l > kN) expect.invalid("a sequence length outside [0, Nk]");
  }
  const bool out_strides_mutated = is(M::out_token_stride_small) || is(M::out_head_stride_zero) || is(M::out_batch_stride_zero);
  if (ol.self_overlapping()) expect.invalid("two elements of out share memory");
  else if (out_strides_mutated)  // the library may refuse layouts that interleave dimensions (PyTorch's rule)
    expect.either("out's strides are unusual, though no two elements meet");
  if (out_in_q && ol.overlaps(ql)) expect.invalid("out overlaps Q");
  if (out_in_q && fused && (ol.overlaps(kl) || ol.overlaps(vl))) expect.invalid("out overlaps K or V (fused)");
  if (out_in_v && ol.overlaps(vl)) expect.invalid("out overlaps V");
  if ((out_in_q || out_in_v) && expect.expect != Expect::invalid) expect.either("out shares a buffer with an input without overlapping it");

  // ---- the oracle, per head
  const Index group = kH > 0 ? qH / kH : 1;
  std::vector<HeadProblem<T>> problems;
  std::vector<std::vector<RowExpectation>> expectations;
  const bool check_values = expect.expect != Expect::invalid;
  const int poison = in.byte(kPoison);
  if (check_values) {
    const auto visible = [&](Index b, Index h, Index i, Index j) {
      return masks.visible(i, j, nq, nk) && (sequence_lengths.empty() || j < sequence_lengths[std::size_t(b)]) &&
             (!batch_mask.present() || batch_mask.at(b, h, i, j)) &&
             (!batch_bias.present() || batch_bias.at(b, h, i, j) != -std::numeric_limits<float>::infinity());
    };
    const T poison_value = poison & 4 ? std::numeric_limits<T>::infinity() : nan;
    if ((poison & 1) && !kl.self_overlapping() && !vl.self_overlapping() && !(out_in_q || out_in_v))
      for (Index b = 0; b < B; ++b)  // contract 2: a key no query of its group may see is never read
        for (Index kv = 0; kv < kH; ++kv)
          for (Index j = 0; j < nk; ++j) {
            bool seen = false;
            for (Index h = kv * group; h < (kv + 1) * group; ++h)
              for (Index i = 0; i < nq; ++i) seen = seen || visible(b, h, i, j);
            if (seen) continue;
            for (Index f = 0; f < kD; ++f) k_data[kl.offset(b, kv, j, f)] = poison_value;
            for (Index f = 0; f < vD; ++f) v_data[vl.offset(b, kv, j, f)] = poison_value;
          }
    if ((poison & 2) && !ql.self_overlapping() && !(out_in_q || out_in_v))
      for (Index b = 0; b < B; ++b)
        for (Index h = 0; h < H; ++h)
          for (Index i = 0; i < nq; ++i) {
            bool sees = false;
            for (Index j = 0; j < nk; ++j) sees = sees || visible(b, h, i, j);
            if (!sees)
              for (Index f = 0; f < qD; ++f) q_data[ql.offset(b, h, i, f)] = poison_value;
          }
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        HeadProblem<T> p;
        p.q = ql.head(q_data, b, h);
        p.k = kl.head(k_data, b, h / group);
        p.v = vl.head(v_data, b, h / group);
        p.scale = base.scale.value_or(1.0 / std::sqrt(double(dk)));
        p.tame_scale = tame_scale(base.scale);
        p.reset_masks();
        for (Index i = 0; i < nq; ++i)
          for (Index j = 0; j < nk; ++j) {
            const std::size_t ij = std::size_t(i * nk + j);
            p.visible[ij] = visible(b, h, i, j);
            const Wide bias = masks.bias.present ? masks.bias.at(i, j) : batch_bias.present() ? Wide(batch_bias.at(b, h, i, j)) : 0;
            p.bias[ij] = Wide(T(bias));
            p.bias_overflows[ij] = std::isfinite(bias) && !std::isfinite(T(bias));
          }
        std::vector<RowExpectation> rows;
        for (Index i = 0; i < nq; ++i) rows.push_back(expect_row(p, i));
        problems.push_back(std::move(p));
        expectations.push_back(std::move(rows));
      }
  }

  // The views the calls get: the library's FusedQKV for a fused buffer (checked against the
  // harness's reading of it), the harness's layouts otherwise.
  sdpa::TensorView<const T> qv = ql.view<const T>(q_data), kv = kl.view<const T>(k_data), vv = vl.view<const T>(v_data);
  if (fused) {
    const sdpa::FusedQKV<T> f(q_storage.data(), qB, qN, qH, qD);
    const auto same = [](const sdpa::TensorView<T>& a, const sdpa::TensorView<const T>& b) {
      return a.data == b.data && a.batch == b.batch && a.heads == b.heads && a.tokens == b.tokens &&
             a.features == b.features && a.batch_stride == b.batch_stride && a.head_stride == b.head_stride &&
             a.token_stride == b.token_stride;
    };
    FUZZ_CHECK("fused.views", same(f.q, qv) && same(f.k, kv) && same(f.v, vv), "FusedQKV's views differ from [B, N, 3, H, d]");
    qv = f.q;
    kv = f.k;
    vv = f.v;
  }
  const sdpa::TensorView<T> ov = ol.view<T>(out_data);

  context().input = str("batched ", type_name<T>(), " B=", B, " H=", H, " Hkv=", Hkv, " Nq=", nq, " Nk=", nk, " d_k=", dk,
                        " d_v=", dv, "; Q ", ql.describe(), ", K ", kl.describe(), ", V ", vl.describe(), ", out ",
                        ol.describe(), out_is_own ? "" : " (in an input's memory)", "; ", masks.describe(),
                        "; batch_mask ", batch_mask.describe(), "; batch_bias ", batch_bias.describe(),
                        "; sequence_lengths ", sequence_lengths.size(), "; scale ",
                        base.scale ? str(*base.scale) : std::string("default"), "; blocks ", base.blocks.query_rows, "x",
                        base.blocks.key_rows, "; threads ", threads, "; main kernel ", name(kernel), "; values ",
                        regime.kind, " (specials ", regime.special_rate, "), poison ", poison, "; mutation ",
                        kMutationBatchedNames[int(mutation)]);
  if (verbose()) std::fprintf(stderr, "input: %s\n", context().input.c_str());

  // ---- the calls
  Memory memory;
  memory.add("Q (or the fused buffer)", q_storage);
  memory.add("K", k_storage);
  memory.add("V", v_storage);
  memory.add("out", out_storage);
  memory.add("options.mask", masks.mask.data.get(), masks.mask.size);
  memory.add("options.bias", masks.bias.f);
  memory.add("options.bias", masks.bias.d);
  memory.add("options.batch_mask", batch_mask.data.get(), batch_mask.size);
  memory.add("options.batch_bias", batch_bias.data.get(), batch_bias.size * sizeof(float));
  const std::vector<Index> out_off = ol.offsets();
  std::optional<bool> either_outcome;
  const auto call = [&](const std::string& what, const sdpa::Options& options) {
    if (out_is_own) std::fill(out_storage.begin(), out_storage.end(), sentinel<T>());
    calling(what + " [" + expect.describe() + "]");
    memory.snapshot();
    const Outcome o = attempt([&] { sdpa::attention<T>(qv, kv, vv, ov, options); });
    judge_call(expect, o, either_outcome, memory, [&] {
      std::vector<std::pair<const void*, std::size_t>> writable;
      add_elements(writable, static_cast<const T*>(out_data), out_off);
      return writable;
    });
    return o;
  };
  const auto gather = [&] {
    std::vector<T> values;
    for (const Index o : out_off) values.push_back(out_data[o]);
    return values;
  };

  struct PathResult {
    sdpa::Kernel kernel;
    bool ok;
    std::vector<T> out;
  };
  std::vector<PathResult> results;
  for (const sdpa::Kernel path : kPaths) {
    sdpa::Options options = base;
    options.kernel = path;
    options.threads = threads < 0 ? threads : 1;
    const Outcome o = call(str("attention(TensorViews), ", name(path), ", 1 thread"), options);
    results.push_back({path, o.ok, gather()});
  }
  for (const PathResult& r : results)
    FUZZ_CHECK("7.paths_disagree", r.ok == results.front().ok, name(r.kernel), (r.ok ? " succeeded" : " threw"),
               " but ", name(results.front().kernel), (results.front().ok ? " succeeded" : " threw"));
  if (check_values && results.front().ok) calling("the results of attention(TensorViews) on every path, 1 thread (the detail names the path)");
  if (check_values && results.front().ok)
    for (Index b = 0; b < B; ++b)
      for (Index h = 0; h < H; ++h) {
        const std::size_t head = std::size_t(b * H + h);
        std::vector<HeadResult<T>> heads;
        for (const PathResult& r : results)  // gathered in (b, h, n, f) order
          heads.push_back({name(r.kernel), Strided<T>{r.out.data() + head * std::size_t(nq * dv), nq, dv, dv, 1}, nullptr});
        const std::string where = str(" (sequence ", b, ", head ", h, ")");
        for (const HeadResult<T>& r : heads) check_head(r, problems[head], expectations[head], where);
        check_paths_agree(heads, problems[head], expectations[head], where);
      }

  // (c) More threads and user pools: the same bits.
  if (out_is_own)
    for (const PathResult& r : results) {
      if (!r.ok) continue;
      for (const ThreadVariant& variant : thread_variants(r.kernel == kernel, threads)) {
        const sdpa::Options options = variant.applied_to(base, r.kernel);
        const std::string what = str("attention(TensorViews), ", name(r.kernel), ", ", variant.name);
        if (call(what, options).ok) check_same_bits(what, r.out.data(), gather().data(), r.out.size() * sizeof(T));
      }
    }
}

}  // namespace sdpa_fuzz
