// tests/fuzz/byte_reader.hpp - the fuzzer's input, decoded: one byte per decision at a fixed
// offset, then a seed for the bulk of the element values, then explicit special values.
//
//   [ header: byte f is decision Field f ][ seed: 8 bytes ][ pokes: 4 bytes each ... ]
//
// Every field is read whatever the others say, so a mutation of one byte changes one decision
// (libFuzzer's mutations stay local), and a missing byte reads as 0, which is always the plain
// choice (a short input is a small, simple case). tests/fuzz/make_corpus.py writes the seed
// corpus by field name: it reads the Field enum below from this file, so this is the one list.
#pragma once

#include <cstddef>
#include <cstdint>

namespace sdpa_fuzz {

// clang-format off
enum Field : std::size_t {
  kScenario,          // which API family: 0 2-D attention, 1 batched TensorView, 2 split keys + merge + weights, 3 KV cache + layer, 4 backward
  kElementType,       // 0 float, 1 double (scenarios 0-2, 4)
  kQueries,           // Nq = byte % 41
  kKeys,              // Nk = byte % 41
  kHeadDim,           // d_k = 1 + byte % 20
  kValueDim,          // d_v = 1 + byte % 20
  kBatch,             // 1 + byte % 3
  kHeads,             // query heads, 1 + byte % 4
  kKvHeads,           // key/value heads: a divisor of the query heads, chosen by byte
  kLayoutQ,           // layout of Q (2-D: Eigen Map kinds; batched: TensorView strides)
  kLayoutK,
  kLayoutV,
  kLayoutOut,
  kPadding,           // extra elements of a padded stride, 1 + byte % 5
  kScale,             // 0 default 1/sqrt(d_k), 1 moderate, 2 tiny, 3 huge
  kScaleValue,        // which value of the kind
  kCausal,            // byte & 1
  kMask,              // boolean mask layout (0 none)
  kMaskDensity,       // probability that a pair may attend
  kBias,              // bias type and layout (0 none)
  kBiasSpecials,      // rate (low 2 bits) and kinds (other bits) of -inf / NaN / +inf / huge bias entries
  kKeyLengths,        // 0 none, 1 one length for all rows, 2 one per row
  kKeyLengthsValue,
  kSequenceLengths,   // batched: 0 none, 1 random per sequence, 2 all Nk
  kBatchMask,         // batched: bit 0 present, bits 1-3 broadcast batch/heads/tokens, bit 4 stride 0 on broadcast dims, bit 5 a full dim by stride 0
  kBatchBias,         // batched: the same bits for the float batch bias
  kQueryRows,         // options.blocks.query_rows = byte % 71
  kKeyRows,           // options.blocks.key_rows = byte % 71
  kThreads,           // options.threads = byte % 5 (the main call; determinism runs 1, 2, 3)
  kKernel,            // main call's kernel: 0 Auto, 1 Reference, 2 Blocked, 3 Simd
  kValues,            // 0 uniform [-2, 2]; 1 scaled by up to 1e3 (still tame); 2 some specials; 3 many specials
  kSpecialRate,       // rate of specials for kValues 2
  kPoison,            // bit 0: NaN in K/V rows no query may see; bit 1: NaN in Q rows that see nothing; bit 2: Inf instead of NaN
  kInvalid,           // 0 or > count: a valid call; 1..count: one invalid mutation (scenario's list)
  kSplit,             // scenario 2: split point of the keys; scenario 3: prompt length
  kRows,              // scenario 2: rows of attention_weights_from_lse; scenario 3: steps after the prompt
  kLayer,             // scenario 3: bit 0 biases, bit 1 output projection, bit 2 cross-attention, bits 3+ head dim
  kApi,               // 2-D: which extra call form runs with the main kernel: 0 attention_into, 1 attention(); backward: bit 0 dbias
  kHeaderSize
};
// clang-format on

/// One explicit special value: element `index` (mod the operand's size) of operand `target`
/// becomes special value number `kind` (see special_value in fuzz_attention.cpp).
struct Poke {
  std::uint8_t target = 0;
  std::uint16_t index = 0;
  std::uint8_t kind = 0;
};

class ByteReader {
 public:
  static constexpr std::size_t kSeedBytes = 8, kPokeBytes = 4, kMaxPokes = 16;

  ByteReader(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}

  std::uint8_t byte(Field f) const { return f < size_ ? data_[f] : 0; }
  /// A choice among n (n >= 1): 0 when the byte is missing.
  int pick(Field f, int n) const { return byte(f) % n; }
  /// An integer in [lo, hi].
  int range(Field f, int lo, int hi) const { return lo + byte(f) % (hi - lo + 1); }
  bool flag(Field f) const { return (byte(f) & 1) != 0; }
  /// A probability from a byte: 0 -> 0, 255 -> 1.
  double fraction(Field f) const { return byte(f) / 255.0; }

  std::uint64_t seed() const {
    std::uint64_t s = 0;
    for (std::size_t i = 0; i < kSeedBytes; ++i) s = (s << 8) | at(kHeaderSize + i);
    return s;
  }
  std::size_t pokes() const {
    const std::size_t start = kHeaderSize + kSeedBytes;
    const std::size_t n = size_ > start ? (size_ - start) / kPokeBytes : 0;
    return n < kMaxPokes ? n : kMaxPokes;
  }
  Poke poke(std::size_t i) const {
    const std::size_t p = kHeaderSize + kSeedBytes + i * kPokeBytes;
    return {at(p), std::uint16_t(at(p + 1) << 8 | at(p + 2)), at(p + 3)};
  }

 private:
  std::uint8_t at(std::size_t i) const { return i < size_ ? data_[i] : 0; }
  const std::uint8_t* data_;
  std::size_t size_;
};

}  // namespace sdpa_fuzz
