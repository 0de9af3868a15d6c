// Each microkernel of the ISA under test, alone, at every height 1..R (XNNPACK's microkernel
// tester idea): the score block, the fused score-softmax block, the value block and the
// decode row tiles, against double-precision loops, with tolerances from the error bound
// of a float dot product (|error| <= n eps sum |a_i b_i|, Higham's gamma_n, doubled for
// safety). Output rows past the height hold NaN and must stay NaN: a microkernel of height
// h writes h rows. CTest runs this file once per ISA the build has (SDPA_ISA), and its bf16
// case on the AVX-512 kernels with AVX512-BF16.
#include "catch.hpp"
#include "support.hpp"

#include <sdpa/attention.hpp>

#include <cstring>

namespace test_microkernels {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

const float kNaN = std::numeric_limits<float>::quiet_NaN();
const double kEps = std::numeric_limits<float>::epsilon();

std::vector<float> random_floats(std::size_t n, std::mt19937_64& gen, double lo = -1, double hi = 1) {
  std::uniform_real_distribution<double> dist(lo, hi);
  std::vector<float> x(n);
  for (float& v : x) v = float(dist(gen));
  return x;
}

/// a ~ b within n eps sum|terms| (doubled), the bound of an n-term float dot product.
bool close(double got, double want, double abs_terms, Index n) {
  return std::fabs(got - want) <= 2.0 * double(n + 1) * kEps * abs_terms + 1e-30;
}

/// `got` against start + sum_i a[i a_step] b[i b_step], computed in double, within the bound of
/// a float dot product of that many terms (the start counts as one when `with_start`).
void check_dot(float got, double start, bool with_start, const float* a, Index a_step, const float* b, Index b_step,
               Index n) {
  double want = start, terms = std::fabs(start);
  for (Index i = 0; i < n; ++i) {
    const double term = double(a[i * a_step]) * b[i * b_step];
    want += term;
    terms += std::fabs(term);
  }
  CHECK(close(got, want, terms, n + (with_start ? 1 : 0)));
}

sdpa::kernels::MicrokernelSet under_test() { return sdpa::kernels::microkernels(sdpa::isa()); }

}  // namespace

TEST_CASE("score block: s = q kt at every height", "[microkernels]") {
  const auto mk = under_test();
  const Index keys = Index(mk.vectors) * mk.width, kt_ld = keys + 3, s_ld = keys + 5;
  auto gen = rng(11);
  for (Index rows = 1; rows <= mk.rows; ++rows)
    for (const Index dk : {Index(1), Index(3), Index(16), Index(17)}) {
      const auto q = random_floats(std::size_t(rows * dk), gen), kt = random_floats(std::size_t(dk * kt_ld), gen);
      std::vector<float> s(std::size_t(mk.rows * s_ld), kNaN);
      mk.score_block(rows, q.data(), dk, kt.data(), kt_ld, s.data(), s_ld);
      CAPTURE(sdpa::isa_name(sdpa::isa()), rows, dk);
      for (Index r = 0; r < mk.rows; ++r)
        for (Index c = 0; c < keys; ++c) {
          const float got = s[std::size_t(r * s_ld + c)];
          if (r >= rows) {
            CHECK(std::isnan(got));
            continue;
          }
          check_dot(got, 0.0, false, &q[std::size_t(r * dk)], 1, &kt[std::size_t(c)], kt_ld, dk);
        }
    }
}

TEST_CASE("fused score-softmax block: weights, rescale and running state at every height", "[microkernels]") {
  const auto mk = under_test();
  const Index keys = Index(mk.vectors) * mk.width, dk = 8, kt_ld = keys, p_ld = keys + 1;
  const double inf = std::numeric_limits<double>::infinity();
  auto gen = rng(12);
  for (Index rows = 1; rows <= mk.rows; ++rows)
    for (const double old_max : {-inf, -30.0, 0.5, 40.0}) {  // no key yet; raised; maybe; never raised
      const auto q = random_floats(std::size_t(rows * dk), gen, -3, 3), kt = random_floats(std::size_t(dk * kt_ld), gen);
      std::vector<float> p(std::size_t(mk.rows * p_ld), kNaN), rescale(std::size_t(mk.rows), kNaN);
      std::vector<float> running_max(std::size_t(mk.rows), float(old_max));
      std::vector<float> running_sum(std::size_t(mk.rows), old_max == -inf ? 0.0f : 3.0f);
      mk.score_softmax_block(rows, q.data(), dk, kt.data(), kt_ld, p.data(), p_ld, running_max.data(),
                             running_sum.data(), rescale.data());
      CAPTURE(sdpa::isa_name(sdpa::isa()), rows, old_max);
      for (Index r = 0; r < rows; ++r) {
        std::vector<double> s(static_cast<std::size_t>(keys), 0.0);
        double tile_max = -inf, score_error = 0;
        for (Index c = 0; c < keys; ++c) {
          double terms = 0;
          for (Index e = 0; e < dk; ++e) {
            const double term = double(q[std::size_t(r * dk + e)]) * kt[std::size_t(e * kt_ld + c)];
            s[std::size_t(c)] += term;
            terms += std::fabs(term);
          }
          score_error = std::max(score_error, 2.0 * double(dk + 1) * kEps * terms);
          tile_max = std::max(tile_max, s[std::size_t(c)]);
        }
        const double new_max = std::max(old_max, tile_max);
        // 2^(s - max) with s off by score_error (twice: s and the max) and exp2 within 2 eps
        const double weight_tolerance = 4 * kEps + 2 * std::log(2.0) * score_error;
        double sum = 0;
        for (Index c = 0; c < keys; ++c) {
          const double want = std::exp2(s[std::size_t(c)] - new_max);
          sum += want;
          CHECK(std::fabs(p[std::size_t(r * p_ld + c)] - want) <= weight_tolerance * std::max(want, 1e-30));
        }
        const double want_rescale = old_max == -inf ? 0.0 : std::exp2(old_max - new_max);
        CHECK(std::fabs(rescale[std::size_t(r)] - want_rescale) <= weight_tolerance * want_rescale);
        CHECK(std::fabs(running_max[std::size_t(r)] - new_max) <= score_error);
        const double want_sum = (old_max == -inf ? 0.0 : 3.0 * want_rescale) + sum;
        CHECK(std::fabs(running_sum[std::size_t(r)] - want_sum) <= (weight_tolerance + keys * kEps) * want_sum);
      }
      for (Index r = rows; r < mk.rows; ++r) CHECK(std::isnan(p[std::size_t(r * p_ld)]));
    }
}

TEST_CASE("value block: acc = rescale acc + p v at every height, full and single vectors", "[microkernels]") {
  const auto mk = under_test();
  auto gen = rng(13);
  for (Index rows = 1; rows <= mk.rows; ++rows)
    for (const Index vectors : {Index(mk.vectors), Index(1)})
      for (const Index keys : {Index(1), Index(5), Index(64)}) {
        const Index cols = vectors * mk.width, v_ld = Index(mk.vectors) * mk.width + 2, acc_ld = cols + 4,
                    p_ld = keys + 3;
        const auto p = random_floats(std::size_t(rows * p_ld), gen, 0, 1), v = random_floats(std::size_t(keys * v_ld), gen),
                   rescale = random_floats(std::size_t(rows), gen, 0, 1);
        std::vector<float> acc = random_floats(std::size_t(mk.rows * acc_ld), gen);
        for (Index r = rows; r < mk.rows; ++r) acc[std::size_t(r * acc_ld)] = kNaN;
        const std::vector<float> before = acc;
        mk.value_block(rows, vectors, p.data(), p_ld, keys, v.data(), v_ld, rescale.data(), acc.data(), acc_ld);
        CAPTURE(sdpa::isa_name(sdpa::isa()), rows, vectors, keys);
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < cols; ++c) {
            check_dot(acc[std::size_t(r * acc_ld + c)], double(rescale[std::size_t(r)]) * before[std::size_t(r * acc_ld + c)],
                      true, &p[std::size_t(r * p_ld)], 1, &v[std::size_t(c)], v_ld, keys);
          }
        for (Index r = rows; r < mk.rows; ++r) CHECK(std::isnan(acc[std::size_t(r * acc_ld)]));
      }
}

TEST_CASE("decode row tiles: scores and values read in place at every row count", "[microkernels]") {
  const auto mk = under_test();
  auto gen = rng(14);
  // Grouped decoding gives the tiles a whole group's rows (heads x new tokens), more than
  // decode_rows: up to 2 decode_rows + 1, blocks of decode_rows and a remainder.
  const Index most = 2 * mk.decode_rows + 1;
  for (Index rows = 1; rows <= most; ++rows)
    for (const Index d : {Index(mk.width), Index(3 * mk.width)})
      for (const Index keys : {Index(1), Index(7), Index(33)}) {
        CAPTURE(sdpa::isa_name(sdpa::isa()), rows, d, keys);
        // K and V rows in place, with NaN padding past d that must never be read
        const Index ld = d + mk.width, s_ld = keys + 2;
        std::vector<float> k = random_floats(std::size_t(keys * ld), gen), v = random_floats(std::size_t(keys * ld), gen);
        for (Index j = 0; j < keys; ++j)
          for (Index e = d; e < ld; ++e) k[std::size_t(j * ld + e)] = v[std::size_t(j * ld + e)] = kNaN;
        const auto q = random_floats(std::size_t(rows * d), gen);
        std::vector<float> s(std::size_t(most * s_ld), kNaN);
        mk.row_scores(rows, q.data(), d, k.data(), ld, keys, s.data(), s_ld);
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < keys; ++c) {
            check_dot(s[std::size_t(r * s_ld + c)], 0.0, false, &q[std::size_t(r * d)], 1, &k[std::size_t(c * ld)], 1, d);
          }
        for (Index r = rows; r < most; ++r) CHECK(std::isnan(s[std::size_t(r * s_ld)]));

        const auto p = random_floats(std::size_t(rows * s_ld), gen, 0, 1), rescale = random_floats(std::size_t(rows), gen, 0, 1);
        std::vector<float> acc = random_floats(std::size_t(most * d), gen);
        for (Index r = rows; r < most; ++r) acc[std::size_t(r * d)] = kNaN;
        const std::vector<float> before = acc;
        mk.row_accumulate(rows, p.data(), s_ld, keys, v.data(), ld, d, rescale.data(), acc.data());
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < d; ++c) {
            check_dot(acc[std::size_t(r * d + c)], double(rescale[std::size_t(r)]) * before[std::size_t(r * d + c)], true,
                      &p[std::size_t(r * s_ld)], 1, &v[std::size_t(c)], ld, keys);
          }
        for (Index r = rows; r < most; ++r) CHECK(std::isnan(acc[std::size_t(r * d)]));
      }
}

// The decode scores sum W dot products' lanes at once; each sum must be reduce_add's, bit for
// bit (the same additions in the same order), in its own lane. Magnitudes spread over 2^-20 to
// 2^20 make any other order of the additions round differently.
TEST_CASE("reduce_add_each: every vector's lane sum in its own lane, bit for bit reduce_add's", "[microkernels]") {
  const auto mk = under_test();
  auto gen = rng(15);
  std::uniform_real_distribution<double> exponent(-20, 20);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<float> vectors = random_floats(std::size_t(mk.width * mk.width), gen);
    for (float& x : vectors) x = float(x * std::exp2(exponent(gen)));
    std::vector<float> each(std::size_t(mk.width), kNaN), one_by_one(std::size_t(mk.width), kNaN);
    mk.reduce_add_each(vectors.data(), each.data());
    mk.reduce_add_one_by_one(vectors.data(), one_by_one.data());
    for (int t = 0; t < mk.width; ++t) {
      CAPTURE(sdpa::isa_name(sdpa::isa()), trial, t);
      CHECK(std::memcmp(&each[std::size_t(t)], &one_by_one[std::size_t(t)], sizeof(float)) == 0);
    }
  }
}

// CTest runs this case as sdpa.microkernels_bf16.<isa> (skipped, by name, where the CPU lacks
// AVX512-BF16). Bf16 inputs have no denormals here: what is left is float accumulation of
// exact products, and for P V the weights rounded to bf16, which the expected sum does too.
TEST_CASE("bf16 microkernels (AVX512-BF16): scores and P V through their packing, at every size", "[microkernels_bf16]") {
  const auto mk = under_test();
  REQUIRE(mk.bf16_scores != nullptr);
  REQUIRE(mk.bf16_accumulate != nullptr);
  using bf16 = Eigen::bfloat16;
  const auto rounded = [](const std::vector<float>& x) {
    std::vector<bf16> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = bf16(x[i]);
    return y;
  };
  const auto widened = [](const std::vector<bf16>& x) {
    std::vector<float> y(x.size());
    for (std::size_t i = 0; i < x.size(); ++i) y[i] = float(x[i]);
    return y;
  };
  auto gen = rng(15);
  const float scale = 0.25f;  // a power of 2: s / scale is exact
  for (Index rows = 1; rows <= 2 * mk.rows + 1; ++rows)  // whole register blocks and remainders
    for (const Index keys : {Index(1), Index(5), Index(64), Index(70)})
      for (const Index d : {Index(1), Index(2), Index(17), Index(64)}) {  // odd d: a half-empty last pair
        CAPTURE(rows, keys, d);
        const auto q = rounded(random_floats(std::size_t(rows * d), gen));
        const auto k = rounded(random_floats(std::size_t(keys * d), gen));
        const std::vector<float> qf = widened(q), kf = widened(k);
        const Index s_ld = keys + 1;
        std::vector<float> s(std::size_t((rows + 1) * s_ld), kNaN);
        mk.bf16_scores(rows, q.data(), d, k.data(), keys, scale, s.data(), s_ld);
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < keys; ++c)
            check_dot(s[std::size_t(r * s_ld + c)] / scale, 0.0, false, &qf[std::size_t(r * d)], 1,
                      &kf[std::size_t(c * d)], 1, d);
        CHECK(std::isnan(s[std::size_t(rows * s_ld)]));

        const auto p = random_floats(std::size_t(rows * keys), gen, 0, 1), rescale = random_floats(std::size_t(rows), gen, 0, 1);
        std::vector<float> p_rounded(p.size());
        for (std::size_t i = 0; i < p.size(); ++i) p_rounded[i] = float(bf16(p[i]));
        const auto v = rounded(random_floats(std::size_t(keys * d), gen));
        const std::vector<float> vf = widened(v);
        const Index acc_ld = d + 1;
        std::vector<float> acc = random_floats(std::size_t((rows + 1) * acc_ld), gen);
        acc[std::size_t(rows * acc_ld)] = kNaN;
        const std::vector<float> before = acc;
        mk.bf16_accumulate(rows, p.data(), keys, keys, v.data(), d, rescale.data(), acc.data(), acc_ld);
        for (Index r = 0; r < rows; ++r)
          for (Index c = 0; c < d; ++c)
            check_dot(acc[std::size_t(r * acc_ld + c)], double(rescale[std::size_t(r)]) * before[std::size_t(r * acc_ld + c)],
                      true, &p_rounded[std::size_t(r * keys)], 1, &vf[std::size_t(c)], d, keys);
        CHECK(std::isnan(acc[std::size_t(rows * acc_ld)]));
      }
}

}  // namespace test_microkernels
