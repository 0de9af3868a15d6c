// tests/fuzz/scenario_merge.hpp - scenario 2: the LSE API. attention_into with an LSE over
// every key; the same over two disjoint key ranges (the masks, causal and key lengths made one
// explicit boolean mask, sliced with the bias) put together by merge_attention; the weights of a
// range of rows from attention_weights_from_lse; attention_weights.
#pragma once

#include "call_options.hpp"
#include "checks.hpp"
#include "masks.hpp"
#include "memory.hpp"
#include "oracle.hpp"
#include "scenario_2d.hpp"
#include "values.hpp"

#include <sdpa/sdpa.hpp>

namespace sdpa_fuzz {

enum class MutationMerge { none, out_b_rows, out_b_cols, lse_b_size, lse_size, first_row_negative, rows_past_end, scale_invalid, count };
inline const char* const kMutationMergeNames[] = {"none", "out_b_rows", "out_b_cols", "lse_b_size", "lse_size",
                                                  "first_row_negative", "rows_past_end", "scale_invalid"};

/// NaN-aware equality: the same value, or both NaN.
template <class T>
bool same_value(T a, T b) {
  return a == b || (std::isnan(a) && std::isnan(b));
}

template <class T>
void run_merge(const ByteReader& in) {
  using M = MutationMerge;
  using Mat = RowMatrix<T>;
  using Vec = sdpa::Vector<T>;
  Random random(in.seed());
  const Index nq = in.byte(kQueries) % 41, nk = in.byte(kKeys) % 41;
  const Index dk = in.range(kHeadDim, 1, 20), dv = in.range(kValueDim, 1, 20), pad = in.range(kPadding, 1, 5);
  const M mutation = decode_mutation<M>(in, kMutationMergeNames);
  const auto is = [&](M m) { return mutation == m; };
  const MapLayout layout = in.pick(kLayoutQ, 2) == 1 ? MapLayout::padded : MapLayout::row_major;
  MapOperand<T> Q = make_map_operand<T>(layout, nq, dk, pad), K = make_map_operand<T>(layout, nk, dk, pad),
                V = make_map_operand<T>(layout, nk, dv, pad);
  Masks masks = make_masks(in, nq, nk, random);
  sdpa::Options base;
  masks.apply(base);
  base.scale = is(M::scale_invalid) ? std::optional<double>(0.0) : decode_scale(in);
  base.blocks = decode_blocks(in);
  base.threads = in.byte(kThreads) % 5;
  base.kernel = main_kernel(in);

  const ValueRegime regime = fill_operands<T>(in, Q, K, V, masks.bias, random);

  const Expectation full = expect_common<T>(base, nq, nk, dk, dk, nk, masks);
  const bool valid = full.expect != Expect::invalid;
  HeadProblem<T> problem;
  std::vector<RowExpectation> rows;
  if (valid) {
    problem = head_problem<T>(Q, K, V, base.scale, dk, masks);
    for (Index i = 0; i < nq; ++i) rows.push_back(expect_row(problem, i));
  }
  const Index split = in.byte(kSplit) % (nk + 1);
  context().input = str("merge ", type_name<T>(), " Nq=", nq, " Nk=", nk, " d_k=", dk, " d_v=", dv, " split at key ",
                        split, "; ", name(layout), "; ", masks.describe(), "; scale ",
                        base.scale ? str(*base.scale) : std::string("default"), "; blocks ", base.blocks.query_rows, "x",
                        base.blocks.key_rows, "; threads ", base.threads, "; kernel ", name(base.kernel), "; values ",
                        regime.kind, "; mutation ", kMutationMergeNames[int(mutation)]);
  if (verbose()) std::fprintf(stderr, "input: %s\n", context().input.c_str());

  // Outputs, sentinel-filled: the full call's, the two parts', and the merge's arguments.
  Mat out_full = Mat::Constant(nq, dv, sentinel<T>()), out_a = out_full, out_b = out_full;
  Vec lse_full = Vec::Constant(nq, sentinel<T>()), lse_a = lse_full, lse_b = lse_full;
  Memory memory;
  watch_inputs(memory, Q, K, V, masks);
  memory.add("out (all keys)", out_full.data(), std::size_t(out_full.size()) * sizeof(T));
  memory.add("lse (all keys)", lse_full.data(), std::size_t(lse_full.size()) * sizeof(T));
  memory.add("out_a", out_a.data(), std::size_t(out_a.size()) * sizeof(T));
  memory.add("lse_a", lse_a.data(), std::size_t(lse_a.size()) * sizeof(T));
  memory.add("out_b", out_b.data(), std::size_t(out_b.size()) * sizeof(T));
  memory.add("lse_b", lse_b.data(), std::size_t(lse_b.size()) * sizeof(T));
  const auto checked = [&](const std::string& what, const Expectation& expect,
                           std::vector<std::pair<const void*, std::size_t>> writable, const auto& call) {
    calling(what + " [" + expect.describe() + "]");
    memory.snapshot();
    const Outcome o = attempt(call);
    judge(expect, o);
    if (!o.ok) memory.require_unchanged();
    else memory.require_only_written(std::move(writable));
    return o;
  };
  const auto whole = [](const auto& m) {
    return std::vector<std::pair<const void*, std::size_t>>{{m.data(), std::size_t(m.size()) * sizeof(T)}};
  };
  const auto both = [&](const auto& a, const auto& b) {
    auto w = whole(a);
    w.push_back(whole(b).front());
    return w;
  };

  // All keys.
  const Outcome full_call = checked("attention_into(Q, K, V, out, lse)", full, both(out_full, lse_full), [&] {
    Q.visit([&](const auto& q) {
      K.visit([&](const auto& k) { V.visit([&](const auto& v) { sdpa::attention_into(q, k, v, out_full, lse_full, base); }); });
    });
  });
  if (full_call.ok && valid)
    calling(str("the results of attention_into(Q, K, V, out, lse), ", name(base.kernel)));
  if (full_call.ok && valid)
    check_head(HeadResult<T>{name(base.kernel), Strided<T>{out_full.data(), nq, dv, dv, 1}, lse_full.data()}, problem, rows, "");

  // Two key ranges, [0, split) and [split, Nk), with every mask as one explicit boolean mask.
  if (!valid) return;
  std::unique_ptr<bool[]> explicit_mask(new bool[std::size_t(std::max<Index>(1, nq * nk))]);
  const auto& lengths = masks.key_lengths;
  for (Index i = 0; i < nq; ++i)
    for (Index j = 0; j < nk; ++j)  // causal, key lengths and the mask; the bias stays a bias
      explicit_mask[std::size_t(i * nk + j)] =
          !(masks.causal && j > i + nk - nq) &&
          !(!lengths.empty() && j >= lengths[lengths.size() == 1 ? 0 : std::size_t(i)]) &&
          (!masks.mask.present() || masks.mask.at(i, j));
  memory.add("the explicit mask", explicit_mask.get(), std::size_t(std::max<Index>(1, nq * nk)));
  const auto part_options = [&](Index first, Index count) {
    sdpa::Options o;
    o.scale = base.scale;
    o.blocks = base.blocks;
    o.threads = base.threads;
    o.kernel = base.kernel;
    o.mask = sdpa::MatrixView<const bool>(explicit_mask.get() + first, nq, count, nk, 1);
    if (!base.bias.empty()) o.bias = base.bias.middle_cols(first, count);
    return o;
  };
  const auto part = [&](const MapOperand<T>& m, Index first, Index count) {
    return Eigen::Map<const Mat, 0, Eigen::OuterStride<>>(m.storage.data() + (count > 0 ? first * m.stride : 0), count,
                                                          m.cols, Eigen::OuterStride<>(m.stride));
  };
  const sdpa::Options options_a = part_options(0, split), options_b = part_options(split, nk - split);
  const Outcome a = checked("attention_into over keys [0, split)", full, both(out_a, lse_a), [&] {
    sdpa::attention_into(part(Q, 0, nq), part(K, 0, split), part(V, 0, split), out_a, lse_a, options_a);
  });
  const Outcome b = checked("attention_into over keys [split, Nk)", full, both(out_b, lse_b), [&] {
    sdpa::attention_into(part(Q, 0, nq), part(K, split, nk - split), part(V, split, nk - split), out_b, lse_b, options_b);
  });
  // The merge's mis-shaped arguments (for the mutations), registered for the whole call.
  const Mat wrong_out_b = Mat::Zero(is(M::out_b_rows) ? nq + 1 : nq, is(M::out_b_cols) ? dv + 1 : dv);
  const Vec wrong_lse_b = Vec::Zero(nq + 1);
  Vec wrong_lse = Vec::Zero(nq + 1);
  memory.add("a mis-shaped argument", wrong_lse.data(), std::size_t(wrong_lse.size()) * sizeof(T));
  if (a.ok && b.ok) {
    const Mat out_a_before = out_a;
    const Vec lse_a_before = lse_a;
    Expectation merge;
    if (is(M::out_b_rows) || is(M::out_b_cols)) merge.invalid("out_b's shape differs from out's");
    if (is(M::lse_b_size)) merge.invalid("lse_b's size differs");
    if (is(M::lse_size)) merge.invalid("lse's size differs");
    const Outcome merged = checked("merge_attention(out_a, lse_a, out_b, lse_b)", merge,
                                   is(M::lse_size) ? both(out_a, wrong_lse) : both(out_a, lse_a), [&] {
      if (is(M::out_b_rows) || is(M::out_b_cols)) sdpa::merge_attention<T>(out_a, lse_a, wrong_out_b, lse_b);
      else if (is(M::lse_b_size)) sdpa::merge_attention<T>(out_a, lse_a, out_b, wrong_lse_b);
      else if (is(M::lse_size)) sdpa::merge_attention<T>(out_a, wrong_lse, out_b, lse_b);
      else sdpa::merge_attention<T>(out_a, lse_a, out_b, lse_b);
    });
    if (merged.ok && merge.expect == Expect::valid)
      for (Index i = 0; i < nq; ++i) {
        const RowExpectation& e = rows[std::size_t(i)];
        bool a_sees = false, b_sees = false;
        for (Index j = 0; j < nk; ++j) (j < split ? a_sees : b_sees) |= problem.visible[std::size_t(i * nk + j)] != 0;
        for (Index c = 0; c < dv; ++c) {
          const T got = out_a(i, c);
          if (e.no_visible_key)
            FUZZ_CHECK("d.masked_row", got == T(0), "merge_attention: row ", i, " sees no key but out(", i, ", ", c, ") = ", got);
          else if (!a_sees)
            FUZZ_CHECK("merge.empty_part", same_value(got, out_b(i, c)), "merge_attention: part a of row ", i,
                       " is empty (LSE ", lse_a_before(i), "), so out(", i, ", ", c, ") must be part b's ", out_b(i, c),
                       ", not ", got);
          else if (!b_sees)
            FUZZ_CHECK("merge.empty_part", same_value(got, out_a_before(i, c)), "merge_attention: part b of row ", i,
                       " is empty (LSE ", lse_b(i), "), so out(", i, ", ", c, ") must be part a's ", out_a_before(i, c),
                       ", not ", got);
          else if (e.tame) {
            // Each part is within its tolerance; the LSE errors move the two parts' weights by
            // a factor within e^(2 lse_tolerance).
            const Wide tolerance = 2 * (e.tolerance + 2 * std::expm1(2 * e.lse_tolerance) * e.v_max);
            FUZZ_CHECK("b.reference", std::fabs(Wide(got) - e.out[std::size_t(c)]) <= tolerance, "merge_attention: out(",
                       i, ", ", c, ") = ", got, " but the reference is ", double(e.out[std::size_t(c)]), " (tolerance ",
                       double(tolerance), ")");
          }
          if (e.row_nan)
            FUZZ_CHECK("f.contract_class", std::isnan(got), "merge_attention: row ", i,
                       " has a NaN score (the full call's output is NaN) but the merged out(", i, ", ", c, ") = ", got,
                       " (part LSEs ", lse_a_before(i), " and ", lse_b(i), ")");
        }
        const T lse = lse_a(i);
        if (e.no_visible_key)
          FUZZ_CHECK("d.masked_row", lse == -std::numeric_limits<T>::infinity(), "merge_attention: row ", i,
                     " sees no key but its LSE is ", lse);
        else if (!a_sees)
          FUZZ_CHECK("merge.empty_part", same_value(lse, lse_b(i)), "merge_attention: part a of row ", i,
                     " is empty, so its LSE must be part b's ", lse_b(i), ", not ", lse);
        else if (!b_sees)
          FUZZ_CHECK("merge.empty_part", same_value(lse, lse_a_before(i)), "merge_attention: part b of row ", i,
                     " is empty, so its LSE must be part a's ", lse_a_before(i), ", not ", lse);
        else if (e.tame)
          FUZZ_CHECK("b.lse", std::fabs(Wide(lse) - e.lse) <= 2 * e.lse_tolerance, "merge_attention: LSE of row ", i,
                     " = ", lse, " but the reference is ", double(e.lse));
        if (e.row_nan)
          FUZZ_CHECK("f.contract_class", std::isnan(lse), "merge_attention: row ", i, " has a NaN score but its merged LSE is ", lse);
      }
  }

  // The weights of rows [first, first + count) from the full call's LSEs, and all weights.
  if (!full_call.ok) return;
  Index first = in.byte(kRows) % (nq + 1);
  Index count = random.below(nq - first + 1);
  Expectation weights_expect = full;
  if (is(M::first_row_negative)) first = -1, weights_expect.invalid("first_row is negative");
  if (is(M::rows_past_end)) count = nq - first + 1, weights_expect.invalid("rows past the last query");
  Vec lse_rows(count);
  for (Index r = 0; r < count; ++r) lse_rows(r) = first + r >= 0 && first + r < nq ? lse_full(first + r) : T(0);
  const auto check_weights = [&](const char* what, const Mat& w, Index first_row, const T* lse) {
    for (Index r = 0; r < w.rows(); ++r) {
      const Index i = first_row + r;
      const RowExpectation& e = rows[std::size_t(i)];
      // Masked pairs weigh exactly 0 ("0 where masked"), in every row whose scores are not NaN
      // (a NaN row's weights are NaN through its sum or its LSE).
      const bool masked_row = e.no_visible_key || (lse && lse[r] == -std::numeric_limits<T>::infinity());
      if (!(e.row_known && !e.row_nan) && !masked_row) continue;
      for (Index j = 0; j < nk; ++j) {
        const T got = w(r, j);
        if (!problem.visible[std::size_t(i * nk + j)] || masked_row)
          FUZZ_CHECK("weights.masked", got == T(0), what, ": P(", i, ", ", j, ") = ", got,
                     " but the pair is masked (or the row sees no key)");
        else if (e.tame) {
          const Wide p = e.weights[std::size_t(j)], tolerance = e.weight_relative * p + e.weight_absolute;
          FUZZ_CHECK("weights.reference", std::fabs(Wide(got) - p) <= tolerance, what, ": P(", i, ", ", j, ") = ", got,
                     " but the reference is ", double(p), " (tolerance ", double(tolerance), ")");
        }
      }
    }
  };
  Mat w;
  const Outcome from_lse = checked(str("attention_weights_from_lse(Q, K, lse rows [", first, ", ", first + count, "))"),
                                   weights_expect, {}, [&] {
    Q.visit([&](const auto& q) { K.visit([&](const auto& k) { w = sdpa::attention_weights_from_lse(q, k, lse_rows, first, base); }); });
  });
  if (from_lse.ok && weights_expect.expect == Expect::valid) check_weights("attention_weights_from_lse", w, first, lse_rows.data());
  const Outcome all = checked("attention_weights(Q, K)", full, {}, [&] {
    Q.visit([&](const auto& q) { K.visit([&](const auto& k) { w = sdpa::attention_weights(q, k, base); }); });
  });
  if (all.ok) check_weights("attention_weights", w, 0, nullptr);
}

}  // namespace sdpa_fuzz
