// tests/fuzz/scenario_backward.hpp - scenario 4: the backward pass of one head. The library's
// forward (attention_into with an LSE, on the input's main kernel) gives O and the LSEs; then
// attention_backward_into runs on every path, with 1, 2 and 3 threads, and with dbias when the
// input has a bias and asks for it (field kApi). Checks, beside (a) and contract 7 as in every
// scenario (a call that threw changed nothing, one that returned wrote only its gradients):
//   (c) the same bits whatever the threads;
//   (d) a row that sees no key has dQ exactly 0, and a key that no row sees has dK and dV (and
//       dbias, every pair no row may attend) exactly 0, whatever Q, K and V hold there;
//   (g) on a tame problem (every row that sees a key is tame, oracle.hpp) every path's
//       gradients equal the chain rule applied to the oracle's exact weights, within the
//       tolerance derived in expected_gradients below.
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

enum class MutationBackward {
  none, d_out_rows, d_out_cols, lse_size, dq_rows, dk_cols, dv_rows, dv_overlaps_dk, dq_overlaps_q, dbias_without_bias,
  dbias_rows, count
};
inline const char* const kMutationBackwardNames[] = {
    "none", "d_out_rows", "d_out_cols", "lse_size", "dq_rows", "dk_cols", "dv_rows", "dv_overlaps_dk", "dq_overlaps_q",
    "dbias_without_bias", "dbias_rows"};

/// The gradients of L = sum(dO * O) from the oracle's weights, with a bound on each element's
/// error (`*_tol`), for a problem whose every row that sees a key is tame.
struct ExpectedGradients {
  std::vector<Wide> dq, dk, dv, dbias, dq_tol, dk_tol, dv_tol, dbias_tol;  // row-major
};

/// The chain rule in long double: D_i = dO_i . o_i, ds_ij = p_ij (dO_i . v_j - D_i), dV_j =
/// sum_i p_ij dO_i, dQ_i = scale sum_j ds_ij k_j, dK_j = scale sum_i ds_ij q_i, dbias_ij = ds_ij
/// (summed over i for a 1 x Nk bias). The tolerance, per term:
///  * the library recomputes p_ij from its own LSE: relatively off by weight_relative, plus
///    weight_absolute (oracle.hpp);
///  * D_i is a dot product with the library's O, each element off by the row's tolerance: off by
///    sum_c |dO_ic| tolerance + gamma(d_v + 2) sum_c |dO_ic o_ic|; dO_i . v_j by gamma(d_v + 2) of its
///    terms' magnitude;
///  * each gradient is a sum over keys or queries (gamma(n + 4) of its terms' magnitude, with the
///    scale's and the products' roundings), and the whole bound is doubled for the second-order
///    terms left out, plus a few of the type's smallest normals.
template <class T>
ExpectedGradients expected_gradients(const HeadProblem<T>& p, const std::vector<RowExpectation>& rows,
                                     const RowMatrix<T>& d_out, Index bias_rows) {
  using P = Precision<T>;
  const Index nq = p.nq(), nk = p.nk(), dk = p.dk(), dv = p.dv();
  const Wide scale = Wide(T(p.scale)), eps = P::eps();
  ExpectedGradients g;
  for (auto* m : {&g.dq, &g.dq_tol}) m->assign(std::size_t(nq * dk), 0);
  for (auto* m : {&g.dk, &g.dk_tol}) m->assign(std::size_t(nk * dk), 0);
  for (auto* m : {&g.dv, &g.dv_tol}) m->assign(std::size_t(nk * dv), 0);
  for (auto* m : {&g.dbias, &g.dbias_tol}) m->assign(std::size_t(bias_rows * nk), 0);
  for (Index i = 0; i < nq; ++i) {
    const RowExpectation& e = rows[std::size_t(i)];
    if (e.no_visible_key) continue;
    Wide d = 0, d_abs = 0, d_out_abs = 0;
    for (Index c = 0; c < dv; ++c) {
      d += Wide(d_out(i, c)) * e.out[std::size_t(c)];
      d_abs += std::fabs(Wide(d_out(i, c)) * e.out[std::size_t(c)]);
      d_out_abs += std::fabs(Wide(d_out(i, c)));
    }
    const Wide d_error = d_out_abs * e.tolerance + P::gamma(dv + 2) * d_abs;
    for (Index j = 0; j < nk; ++j) {
      const Wide w = e.weights[std::size_t(j)];
      if (!p.visible[std::size_t(i * nk + j)]) continue;
      Wide dp = 0, dp_abs = 0;
      for (Index c = 0; c < dv; ++c) {
        dp += Wide(d_out(i, c)) * Wide(p.v(j, c));
        dp_abs += std::fabs(Wide(d_out(i, c)) * Wide(p.v(j, c)));
      }
      const Wide ds = w * (dp - d);
      const Wide ds_error = (w * (e.weight_relative + 4 * eps) + e.weight_absolute) * (std::fabs(dp) + std::fabs(d)) +
                            w * (P::gamma(dv + 2) * dp_abs + d_error);
      for (Index c = 0; c < dv; ++c) {
        g.dv[std::size_t(j * dv + c)] += w * Wide(d_out(i, c));
        g.dv_tol[std::size_t(j * dv + c)] +=
            (w * (e.weight_relative + P::gamma(nq + 4)) + e.weight_absolute) * std::fabs(Wide(d_out(i, c)));
      }
      for (Index c = 0; c < dk; ++c) {
        g.dq[std::size_t(i * dk + c)] += scale * ds * Wide(p.k(j, c));
        g.dq_tol[std::size_t(i * dk + c)] += scale * (ds_error + P::gamma(nk + 4) * std::fabs(ds)) * std::fabs(Wide(p.k(j, c)));
        g.dk[std::size_t(j * dk + c)] += scale * ds * Wide(p.q(i, c));
        g.dk_tol[std::size_t(j * dk + c)] += scale * (ds_error + P::gamma(nq + 4) * std::fabs(ds)) * std::fabs(Wide(p.q(i, c)));
      }
      if (bias_rows > 0) {
        const std::size_t b = std::size_t((bias_rows == 1 ? 0 : i) * nk + j);
        g.dbias[b] += ds;
        g.dbias_tol[b] += ds_error + P::gamma(nq + 4) * std::fabs(ds);
      }
    }
  }
  for (auto* m : {&g.dq_tol, &g.dk_tol, &g.dv_tol, &g.dbias_tol})
    for (Wide& t : *m) t = 2 * t + 8 * P::min_normal();
  return g;
}

template <class T>
void run_backward(const ByteReader& in) {
  using M = MutationBackward;
  using Mat = RowMatrix<T>;
  using Vec = sdpa::Vector<T>;
  Random random(in.seed());
  const Index nq = in.byte(kQueries) % 41, nk = in.byte(kKeys) % 41;
  const Index dk = in.range(kHeadDim, 1, 20), dv = in.range(kValueDim, 1, 20), pad = in.range(kPadding, 1, 5);
  const M mutation = decode_mutation<M>(in, kMutationBackwardNames);
  const auto is = [&](M m) { return mutation == m; };
  static constexpr MapLayout kLayouts[] = {MapLayout::row_major, MapLayout::padded, MapLayout::column_major};
  const MapLayout layout = kLayouts[in.pick(kLayoutQ, 3)];
  MapOperand<T> Q = make_map_operand<T>(layout, nq, dk, pad), K = make_map_operand<T>(layout, nk, dk, pad),
                V = make_map_operand<T>(layout, nk, dv, pad);
  Masks masks = make_masks(in, nq, nk, random);
  sdpa::Options base;
  masks.apply(base);
  base.scale = decode_scale(in);
  base.blocks = decode_blocks(in);
  base.kernel = main_kernel(in);
  const bool with_dbias = (masks.bias.present && (in.byte(kApi) & 1)) || is(M::dbias_without_bias) || is(M::dbias_rows);
  const Index bias_rows = masks.bias.present ? masks.bias.rows : 0;

  const ValueRegime regime = fill_operands<T>(in, Q, K, V, masks.bias, random);
  const Expectation forward = expect_common<T>(base, nq, nk, dk, dk, nk, masks);
  const bool valid = forward.expect == Expect::valid;
  HeadProblem<T> problem;
  std::vector<RowExpectation> rows;
  const int poison = in.byte(kPoison);
  if (valid) {
    problem = head_problem<T>(Q, K, V, base.scale, dk, masks);
    poison_unread(poison, problem, Q, K, V, true, true);  // such keys and rows add nothing to any gradient
    for (Index i = 0; i < nq; ++i) rows.push_back(expect_row(problem, i));
  }
  context().input = str("backward ", type_name<T>(), " Nq=", nq, " Nk=", nk, " d_k=", dk, " d_v=", dv, "; ", name(layout),
                        "; ", masks.describe(), "; scale ", base.scale ? str(*base.scale) : std::string("default"),
                        "; blocks ", base.blocks.query_rows, "x", base.blocks.key_rows, "; main kernel ", name(base.kernel),
                        "; values ", regime.kind, ", poison ", poison, with_dbias ? "; dbias" : "", "; mutation ",
                        kMutationBackwardNames[int(mutation)]);
  if (verbose()) std::fprintf(stderr, "input: %s\n", context().input.c_str());

  // The forward's O and LSE (zeros when the forward must be rejected: the backward must be too),
  // and dO, uniform in [-1, 1].
  Mat O = Mat::Zero(nq, dv), d_out(is(M::d_out_rows) ? nq + 1 : nq, is(M::d_out_cols) ? dv + 1 : dv);
  Vec lse = Vec::Zero(is(M::lse_size) ? nq + 1 : nq);
  for (Index i = 0; i < d_out.size(); ++i) d_out.data()[i] = T(random.uniform(-1, 1));
  if (valid) {
    calling("the forward, attention_into(Q, K, V, O, lse)");
    Vec forward_lse(nq);
    const Outcome o = attempt([&] {
      Q.visit([&](const auto& q) {
        K.visit([&](const auto& k) { V.visit([&](const auto& v) { sdpa::attention_into(q, k, v, O, forward_lse, base); }); });
      });
    });
    judge(forward, o);
    if (!o.ok) return;
    for (Index i = 0; i < nq; ++i) lse(i) = forward_lse(i);
  }

  Expectation expect = forward;
  if (is(M::d_out_rows) || is(M::d_out_cols)) expect.invalid("dO is not Nq x d_v");
  if (is(M::lse_size)) expect.invalid("the LSE does not have Nq entries");
  if (is(M::dq_rows)) expect.invalid("dQ is not Nq x d_k");
  if (is(M::dk_cols)) expect.invalid("dK is not Nk x d_k");
  if (is(M::dv_rows)) expect.invalid("dV is not Nk x d_v");
  if (is(M::dv_overlaps_dk) && nk > 0 && std::min(dk, dv) > 0) expect.invalid("dV overlaps dK");
  if (is(M::dq_overlaps_q) && nq > 0 && dk > 0) expect.invalid("dQ overlaps Q");
  if (with_dbias && !masks.bias.present) expect.invalid("dbias is asked for without a bias");
  if (is(M::dbias_rows) && masks.bias.present) expect.invalid("dbias does not have the bias's shape");
  const Index dbias_rows = with_dbias && (is(M::dbias_rows) || !masks.bias.present) ? bias_rows + 1 : bias_rows;

  // The gradients, sentinel-filled; dK and dV share one buffer (apart, but for the overlap
  // mutation), and the dQ-overlaps-Q mutation puts dQ over Q's storage (at least Nq d_k long).
  std::vector<T> dq_storage(std::size_t((nq + 1) * dk), sentinel<T>());
  std::vector<T> dkv_storage(std::size_t((nk + 1) * (dk + dv)), sentinel<T>());
  std::vector<T> dbias_storage(std::size_t(std::max<Index>(1, dbias_rows * nk)), sentinel<T>());
  using Out = Eigen::Map<Mat>;
  Out dq(is(M::dq_overlaps_q) ? Q.storage.data() : dq_storage.data(), is(M::dq_rows) ? nq + 1 : nq, dk);
  Out dk_map(dkv_storage.data(), nk, is(M::dk_cols) ? dk + 1 : dk);
  Out dv_map(dkv_storage.data() + (is(M::dv_overlaps_dk) ? 0 : (nk + 1) * dk), is(M::dv_rows) ? nk + 1 : nk, dv);
  sdpa::ExtraGradients<T> extra;
  if (with_dbias) extra.dbias = sdpa::MatrixView<T>(dbias_storage.data(), dbias_rows, nk, nk);

  Memory memory;
  watch_inputs(memory, Q, K, V, masks);
  memory.add("O", O.data(), std::size_t(O.size()) * sizeof(T));
  memory.add("lse", lse.data(), std::size_t(lse.size()) * sizeof(T));
  memory.add("dO", d_out.data(), std::size_t(d_out.size()) * sizeof(T));
  memory.add("dQ", dq_storage);
  memory.add("dK, dV", dkv_storage);
  memory.add("dbias", dbias_storage);
  const auto writable = [&] {
    std::vector<std::pair<const void*, std::size_t>> w{{dq.data(), std::size_t(dq.size()) * sizeof(T)},
                                                       {dk_map.data(), std::size_t(dk_map.size()) * sizeof(T)},
                                                       {dv_map.data(), std::size_t(dv_map.size()) * sizeof(T)}};
    if (with_dbias) w.push_back({dbias_storage.data(), std::size_t(dbias_rows * nk) * sizeof(T)});
    return w;
  };
  std::optional<bool> either_outcome;
  const auto run = [&](sdpa::Kernel kernel, int threads) {
    sdpa::Options options = base;
    options.kernel = kernel;
    options.threads = threads;
    calling(str("attention_backward_into, ", name(kernel), ", ", threads, " threads [", expect.describe(), "]"));
    memory.snapshot();
    const Outcome o = attempt([&] {
      Q.visit([&](const auto& q) {
        K.visit([&](const auto& k) {
          V.visit([&](const auto& v) {
            sdpa::attention_backward_into(q, k, v, O, lse, d_out, dq, dk_map, dv_map, options, extra);
          });
        });
      });
    });
    judge_call(expect, o, either_outcome, memory, writable);
    return o.ok;
  };
  const auto gradients = [&] {
    std::vector<T> all(dq.data(), dq.data() + dq.size());
    all.insert(all.end(), dk_map.data(), dk_map.data() + dk_map.size());
    all.insert(all.end(), dv_map.data(), dv_map.data() + dv_map.size());
    if (with_dbias) all.insert(all.end(), dbias_storage.begin(), dbias_storage.begin() + dbias_rows * nk);
    return all;
  };

  if (expect.expect != Expect::valid) {
    run(base.kernel, 1);
    return;
  }
  bool tame = true;  // the forward was valid and ran: `rows` holds every row's expectation
  for (const RowExpectation& e : rows) tame = tame && (e.no_visible_key || e.tame);
  const ExpectedGradients want = tame ? expected_gradients(problem, rows, d_out, with_dbias ? bias_rows : 0) : ExpectedGradients{};
  const auto check = [&](const char* path, const char* what, const Out& got, const std::vector<Wide>& value,
                         const std::vector<Wide>& tolerance) {
    for (Index r = 0; r < got.rows(); ++r)
      for (Index c = 0; c < got.cols(); ++c) {
        const std::size_t at = std::size_t(r * got.cols() + c);
        const Wide error = std::fabs(Wide(got(r, c)) - value[at]);
        FUZZ_CHECK("g.gradient", error <= tolerance[at], path, ": ", what, "(", r, ", ", c, ") = ", got(r, c),
                   " but the chain rule on the oracle gives ", double(value[at]), " (error ", double(error), ", tolerance ",
                   double(tolerance[at]), ")");
      }
  };
  for (const sdpa::Kernel kernel : kPaths) {
    if (!run(kernel, 1)) continue;
    const char* path = name(kernel);
    // (d): what no pair connects is exactly 0
    for (Index i = 0; i < nq; ++i)
      if (rows[std::size_t(i)].no_visible_key)
        for (Index c = 0; c < dk; ++c)
          FUZZ_CHECK("d.masked_row", dq(i, c) == T(0), path, ": row ", i, " sees no key but dQ(", i, ", ", c, ") = ", dq(i, c));
    for (Index j = 0; j < nk; ++j) {
      if (problem.key_seen(j)) continue;
      for (Index c = 0; c < dk; ++c)
        FUZZ_CHECK("d.unseen_key", dk_map(j, c) == T(0), path, ": no row sees key ", j, " but dK(", j, ", ", c, ") = ", dk_map(j, c));
      for (Index c = 0; c < dv; ++c)
        FUZZ_CHECK("d.unseen_key", dv_map(j, c) == T(0), path, ": no row sees key ", j, " but dV(", j, ", ", c, ") = ", dv_map(j, c));
    }
    if (with_dbias)
      for (Index r = 0; r < bias_rows; ++r)
        for (Index j = 0; j < nk; ++j) {
          const bool seen = bias_rows == 1 ? problem.key_seen(j) : problem.visible[std::size_t(r * nk + j)] != 0;
          if (!seen)
            FUZZ_CHECK("d.unseen_pair", dbias_storage[std::size_t(r * nk + j)] == T(0), path, ": no row may attend key ", j,
                       " through bias row ", r, " but dbias(", r, ", ", j, ") = ", dbias_storage[std::size_t(r * nk + j)]);
        }
    // (g)
    if (tame) {
      stats().tame_rows += nq;
      check(path, "dQ", dq, want.dq, want.dq_tol);
      check(path, "dK", dk_map, want.dk, want.dk_tol);
      check(path, "dV", dv_map, want.dv, want.dv_tol);
      if (with_dbias) check(path, "dbias", Out(dbias_storage.data(), bias_rows, nk), want.dbias, want.dbias_tol);
    }
    // (c)
    const std::vector<T> one_thread = gradients();
    for (const int threads : {2, 3}) {
      if (!run(kernel, threads)) break;
      const std::vector<T> again = gradients();
      check_same_bits(str(path, " backward with ", threads, " threads"), one_thread.data(), again.data(),
                      one_thread.size() * sizeof(T));
    }
  }
}

}  // namespace sdpa_fuzz
