// tests/fuzz/fuzz_attention.cpp - libFuzzer target over sdpa's public API.
//
// An input (byte_reader.hpp) picks a scenario, sizes (Nq, Nk 0..40; d_k, d_v 1..20; batch 1..3;
// heads 1..4 and key/value heads dividing them), layouts and strides, every option, the element
// values, and optionally one invalid mutation. Five scenarios:
//   0  scenario_2d.hpp       sdpa::attention, attention_into (with and without an LSE) on
//                            Eigen Maps of five layouts, including outer stride 0 and overlapping
//                            rows (read correctly or rejected), float and double
//   1  scenario_batched.hpp  sdpa::attention on TensorViews: bhnd, bnhd, padded, broadcast (stride
//                            0), overlapping and fused layouts, grouped-query heads, batch masks
//   2  scenario_merge.hpp    attention_into with an LSE, merge_attention of two key ranges,
//                            attention_weights_from_lse, attention_weights
//   3  scenario_layer.hpp    KVCache and SelfAttention<float>::random / step / forward
//   4  scenario_backward.hpp attention_backward_into (with dbias) on every path, after the
//                            library's forward: gradients against the chain rule on the oracle
//
// The checks (checks.hpp, with the oracle of oracle.hpp written independently of the library):
//   (a) an exception other than std::invalid_argument is a finding; a call that throws leaves
//       every caller-owned buffer as it was (memory.hpp), and one that returns writes only its
//       outputs' elements;
//   (b) on tame rows (finite, |x| <= 1e3, moderate scale) every path equals a long double
//       reference within a tolerance derived in oracle.hpp;
//   (c) the same path gives the same bits with 1, 2, 3 threads and with user thread pools;
//   (d) a row that sees no key is exactly 0 with LSE -inf on every path;
//   (e) the class (NaN / +inf / -inf / finite) of every output agrees across the paths, and
//   (f) is what the contract says, except where the element type's rounding may decide it
//       (oracle.hpp lists those cases: a dot product that can overflow, and a few more);
//   7   contract point 7: bad input throws std::invalid_argument, good input does not.
// A failed check prints what failed and traps (finding.hpp: SDPA_FUZZ_VERBOSE, SDPA_FUZZ_IGNORE).
#include "byte_reader.hpp"
#include "finding.hpp"
#include "scenario_2d.hpp"
#include "scenario_backward.hpp"
#include "scenario_batched.hpp"
#include "scenario_layer.hpp"
#include "scenario_merge.hpp"

#include <cstddef>
#include <cstdint>

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace sdpa_fuzz;
  const ByteReader in(data, size);
  const bool is_double = in.pick(kElementType, 2) == 1;
  context() = {};
  switch (in.pick(kScenario, 5)) {
    case 0: is_double ? run_2d<double>(in) : run_2d<float>(in); break;
    case 1: is_double ? run_batched<double>(in) : run_batched<float>(in); break;
    case 2: is_double ? run_merge<double>(in) : run_merge<float>(in); break;
    case 3: run_layer(in); break;
    default: is_double ? run_backward<double>(in) : run_backward<float>(in); break;
  }
  return 0;
}
