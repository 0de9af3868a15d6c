// tests/fuzz/checks.hpp - the checks every scenario shares:
//   (a) any exception but std::invalid_argument is a finding; contract 7: a bad call throws it
//       and a good one does not (memory.hpp: a call that threw changed nothing);
//   (b) on tame rows every path equals the oracle within its tolerance (values and LSE);
//   (c) the same path gives the same bits whatever the threads;
//   (d) a row that sees no key is exactly 0 with LSE -inf, on every path;
//   (e) on any data the class (NaN / +inf / -inf / finite) of every output agrees across paths;
//   (f) ... and is the one the contract says (oracle.hpp), where rounding cannot decide it.
#pragma once

#include "finding.hpp"
#include "memory.hpp"
#include "oracle.hpp"

#include <cstring>
#include <limits>
#include <optional>
#include <stdexcept>
#include <string>
#include <typeinfo>
#include <vector>

namespace sdpa_fuzz {

enum class Expect { valid, invalid, either };

/// What the harness knows before a call runs: it must succeed, must throw
/// std::invalid_argument (and why), or may do either (input the API may read or reject).
struct Expectation {
  Expect expect = Expect::valid;
  std::string reason;
  void invalid(const std::string& why) {
    if (expect != Expect::invalid) reason = why;
    expect = Expect::invalid;
  }
  void either(const std::string& why) {
    if (expect == Expect::valid) {
      expect = Expect::either;
      reason = why;
    }
  }
  std::string describe() const {
    return expect == Expect::valid ? "valid" : (expect == Expect::invalid ? "invalid: " : "may be rejected: ") + reason;
  }
};

struct Outcome {
  bool ok = false;
  std::string message;
};

/// Runs a call: std::invalid_argument is an outcome, any other exception a finding (a).
template <class Call>
Outcome attempt(Call&& call) {
  ++stats().calls;
  try {
    call();
    return {true, {}};
  } catch (const std::invalid_argument& e) {
    ++stats().rejected;
    return {false, e.what()};
  } catch (const std::exception& e) {
    finding("a.exception", str("unexpected ", typeid(e).name(), ": ", e.what()));
    return {false, e.what()};
  } catch (...) {
    finding("a.exception", "an exception not derived from std::exception");
    return {false, "?"};
  }
}

/// Contract 7: a bad call throws std::invalid_argument, a good one does not.
inline void judge(const Expectation& e, const Outcome& o) {
  if (e.expect == Expect::valid) FUZZ_CHECK("7.rejects_valid", o.ok, "std::invalid_argument on a valid call: ", o.message);
  if (e.expect == Expect::invalid) FUZZ_CHECK("7.accepts_invalid", !o.ok, "no std::invalid_argument, but ", e.reason);
}

/// Contract 7 for one call: the outcome expected (for an "either" expectation, the same as every
/// other call of this input), and memory: a call that threw changed nothing, one that returned
/// wrote only the bytes `writable()` lists.
template <class Writable>
void judge_call(const Expectation& expect, const Outcome& o, std::optional<bool>& either_outcome, const Memory& memory,
                const Writable& writable) {
  judge(expect, o);
  if (expect.expect == Expect::either) {
    if (!either_outcome) either_outcome = o.ok;
    FUZZ_CHECK("7.inconsistent", *either_outcome == o.ok, "this call ", o.ok ? "succeeded" : "threw (" + o.message + ")",
               " where an earlier call of the same input did the opposite");
  }
  if (!o.ok)
    memory.require_unchanged();
  else
    memory.require_only_written(writable());
}

/// What one path gave for one head: its output as the harness reads it, and its LSEs (or null).
template <class T>
struct HeadResult {
  const char* path = "";
  Strided<T> out;
  const T* lse = nullptr;
};

/// Row i of the problem, for a finding: its query, and for each visible key the score and
/// V(j, c).
template <class T>
std::string describe_row(const HeadProblem<T>& p, const RowExpectation& e, Index i, Index c) {
  std::string s = str("row ", i, ": max sum|scale q k| ", double(e.max_scaled_dot), ", max sum|q k| ",
                      double(e.max_unscaled_dot), ", max |scale log2e q| ", double(e.max_prescaled_q), ", max |bias| ",
                      double(e.max_abs_bias), "; q = [");
  for (Index x = 0; x < p.dk() && x < 8; ++x) s += str(x ? " " : "", p.q(i, x));
  s += p.dk() > 8 ? " ...]" : "]";
  int shown = 0;
  for (Index j = 0; j < p.nk() && shown < 8; ++j) {
    if (!p.visible[std::size_t(i * p.nk() + j)]) continue;
    Wide dot = 0;
    for (Index x = 0; x < p.dk(); ++x) dot += Wide(p.q(i, x)) * Wide(p.k(j, x));
    s += str("; key ", j, ": score ", double(Wide(T(p.scale)) * dot + p.bias[std::size_t(i * p.nk() + j)]), " v ",
             p.v(j, c));
    ++shown;
  }
  if (!e.unknown_because.empty()) s += "; (" + e.unknown_because + ")";
  return s;
}

/// (d), (b) and (f) for one path's result on one head.
template <class T>
void check_head(const HeadResult<T>& r, const HeadProblem<T>& p, const std::vector<RowExpectation>& rows,
                const std::string& head) {
  const Wide minus_inf = -std::numeric_limits<Wide>::infinity();
  for (Index i = 0; i < p.nq(); ++i) {
    const RowExpectation& e = rows[std::size_t(i)];
    if (e.no_visible_key) {  // (d), contract 5
      ++stats().masked_rows;
      for (Index c = 0; c < p.dv(); ++c)
        FUZZ_CHECK("d.masked_row", r.out(i, c) == T(0), r.path, head, ": row ", i, " sees no key but out(", i, ", ", c,
                   ") = ", r.out(i, c));
      if (r.lse)
        FUZZ_CHECK("d.masked_row", Wide(r.lse[i]) == minus_inf, r.path, head, ": row ", i, " sees no key but its LSE is ",
                   r.lse[i]);
      continue;
    }
    if (e.tame) {  // (b)
      ++stats().tame_rows;
      for (Index c = 0; c < p.dv(); ++c) {
        const Wide error = std::fabs(Wide(r.out(i, c)) - e.out[std::size_t(c)]);
        FUZZ_CHECK("b.reference", error <= e.tolerance, r.path, head, ": out(", i, ", ", c, ") = ", r.out(i, c),
                   " but the reference is ", double(e.out[std::size_t(c)]), " (error ", double(error), ", tolerance ",
                   double(e.tolerance), "); ", describe_row(p, e, i, c));
      }
      if (r.lse) {
        const Wide error = std::fabs(Wide(r.lse[i]) - e.lse);
        FUZZ_CHECK("b.lse", error <= e.lse_tolerance, r.path, head, ": LSE of row ", i, " = ", r.lse[i],
                   " but the reference is ", double(e.lse), " (tolerance ", double(e.lse_tolerance), ")");
      }
    }
    if (!e.row_known) continue;  // (f)
    for (Index c = 0; c < p.dv(); ++c) {
      if (!e.column_known[std::size_t(c)]) continue;
      ++stats().class_checks;
      FUZZ_CHECK("f.contract_class", class_of(r.out(i, c)) == e.column_class[std::size_t(c)], r.path, head, ": out(",
                 i, ", ", c, ") = ", r.out(i, c), " but the contract says ", name(e.column_class[std::size_t(c)]), "; ",
                 describe_row(p, e, i, c));
    }
    if (r.lse)
      FUZZ_CHECK("f.contract_class", class_of(r.lse[i]) == e.lse_class, r.path, head, ": LSE of row ", i, " = ",
                 r.lse[i], " but the contract says ", name(e.lse_class), "; ", describe_row(p, e, i, 0));
  }
}

/// (e): the classes of every output (and LSE) agree across the paths, wherever the oracle says
/// rounding cannot decide them.
template <class T>
void check_paths_agree(const std::vector<HeadResult<T>>& results, const HeadProblem<T>& p,
                       const std::vector<RowExpectation>& rows, const std::string& head) {
  if (results.size() < 2) return;
  for (Index i = 0; i < p.nq(); ++i) {
    const RowExpectation& e = rows[std::size_t(i)];
    if (!e.row_known) continue;
    for (Index c = 0; c < p.dv(); ++c) {
      if (!e.column_known[std::size_t(c)]) continue;
      const Class first = class_of(results[0].out(i, c));
      ++stats().path_comparisons;
      for (std::size_t r = 1; r < results.size(); ++r)
        FUZZ_CHECK("e.paths_class", class_of(results[r].out(i, c)) == first, head, ": out(", i, ", ", c, ") is ",
                   results[0].out(i, c), " on ", results[0].path, " but ", results[r].out(i, c), " on ",
                   results[r].path, "; ", describe_row(p, e, i, c));
    }
    if (!results[0].lse) continue;
    for (std::size_t r = 1; r < results.size(); ++r)
      if (results[r].lse)
        FUZZ_CHECK("e.paths_class", class_of(results[r].lse[i]) == class_of(results[0].lse[i]), head, ": LSE of row ",
                   i, " is ", results[0].lse[i], " on ", results[0].path, " but ", results[r].lse[i], " on ",
                   results[r].path, "; ", describe_row(p, e, i, 0));
  }
}

/// (c): a rerun with other threads gave the same bytes.
inline void check_same_bits(const std::string& what, const void* expected, const void* got, std::size_t bytes) {
  ++stats().thread_comparisons;
  if (bytes == 0 || std::memcmp(expected, got, bytes) == 0) return;
  std::size_t i = 0;
  while (static_cast<const unsigned char*>(expected)[i] == static_cast<const unsigned char*>(got)[i]) ++i;
  finding("c.threads", str(what, ": differs from the 1-thread result at byte ", i, " of ", bytes));
}

}  // namespace sdpa_fuzz
