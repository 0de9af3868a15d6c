// Every kernel path against the independent long-double reference (support.hpp), over sizes
// around the vector width and the tile sizes, odd head dims, Nq != Nk, tiny forced tiles,
// large logits, and inputs surrounded by NaN that must never be read.
#include "catch.hpp"
#include "support.hpp"


#include <thread>

namespace test_kernels {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

/// Runs `kernel` on float or double copies of the inputs and checks against the reference.
template <class T>
void check_all_paths(const Matrix<double>& Q, const Matrix<double>& K, const Matrix<double>& V, const MaskSpec& mask,
                     const sdpa::BlockConfig& blocks = {}) {
  const Matrix<T> q = Q.cast<T>(), k = K.cast<T>(), v = V.cast<T>();
  const double scale = 1.0 / std::sqrt(double(Q.cols()));
  const Expected expected = reference(q, k, v, scale, mask);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options = mask.options(kernel);
    options.blocks = blocks;
    const Matrix<T> out = sdpa::attention(q, k, v, options);
    std::ostringstream what;
    what << name(kernel) << (std::is_same_v<T, float> ? " float" : " double") << " Nq=" << Q.rows()
         << " Nk=" << K.rows() << " dk=" << Q.cols() << " dv=" << V.cols() << " causal=" << mask.causal
         << " blocks=" << blocks.query_rows << "x" << blocks.key_rows;
    check_attention(out, expected, K.rows(), Q.cols(), what.str());
  }
}

void check_shape(Index nq, Index nk, Index dk, Index dv, bool causal, std::uint64_t salt,
                 const sdpa::BlockConfig& blocks = {}) {
  auto gen = rng(salt);
  const Matrix<double> Q = random_matrix<double>(nq, dk, gen, -2, 2), K = random_matrix<double>(nk, dk, gen, -2, 2),
                       V = random_matrix<double>(nk, dv, gen);
  MaskSpec mask;
  mask.causal = causal;
  check_all_paths<float>(Q, K, V, mask, blocks);
  check_all_paths<double>(Q, K, V, mask, blocks);
}

}  // namespace

TEST_CASE("every path matches the reference on sizes around the vector width and the tiles", "[kernels]") {
  // 1, 2, 3; the widths 4, 8, 16 and their neighbours; the AVX-512 key tile 64 and beyond.
  const Index sizes[] = {1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33, 63, 64, 65, 97, 130};
  std::uint64_t salt = 1;
  for (const Index n : sizes)
    for (const bool causal : {false, true}) {
      check_shape(n, n, 16, 16, causal, salt++);
      check_shape(n, 2 * n + 1, 7, 5, causal, salt++);  // Nq != Nk, d_k != d_v
      check_shape(2 * n + 1, n, 9, 17, causal, salt++);  // Nq > Nk: leading rows fully masked when causal
    }
}

TEST_CASE("every path handles odd and large head dims", "[kernels]") {
  const Index dims[] = {1, 3, 17, 40, 59, 64, 111, 128, 256};
  std::uint64_t salt = 100;
  for (const Index d : dims)
    for (const bool causal : {false, true}) {
      check_shape(37, 45, d, d, causal, salt++);
      check_shape(20, 70, d, 33, causal, salt++);
    }
}

TEST_CASE("every path handles the Nq != Nk pairs of FlashAttention's tests", "[kernels][slow]") {
  check_shape(113, 203, 40, 40, false, 200);
  check_shape(113, 203, 59, 59, true, 201);
  // Many query and key tiles of the default sizes, causal, d = 64 (a quarter of the size on
  // kSoftwareWide platforms, where the long-double oracle of this pair alone took 74 s)
  const Index n = kSoftwareWide ? 256 : 1024;
  check_shape(n - 1, n, 64, 64, true, 202);
}

TEST_CASE("tiny forced tiles reach every remainder", "[kernels]") {
  // 1, 2, 3, the vector widths and their successors, and sizes that leave remainders.
  const Index tiles[] = {1, 2, 3, 4, 5, 8, 9, 16, 17, 64, 65};
  std::uint64_t salt = 300;
  for (const Index query_rows : {Index(1), Index(3), Index(7), Index(6), Index(13)})
    for (const Index key_rows : tiles)
      for (const bool causal : {false, true}) check_shape(29, 37, 19, 21, causal, salt++, {query_rows, key_rows});
}

TEST_CASE("large logits: raw exp would overflow but the result is finite and right", "[kernels]") {
  // Scores of several hundred (exp overflows float beyond 88): softmax must subtract the max.
  auto gen = rng(400);
  const Matrix<double> Q = random_matrix<double>(33, 32, gen, 3, 6), K = random_matrix<double>(47, 32, gen, 3, 6),
                       V = random_matrix<double>(47, 8, gen);
  for (const bool causal : {false, true}) {
    MaskSpec mask;
    mask.causal = causal;
    check_all_paths<float>(Q, K, V, mask);
    check_all_paths<double>(Q, K, V, mask);
    check_all_paths<float>(Q, K, V, mask, {2, 3});
  }
}

TEST_CASE("inputs are read in place and nothing around them is touched", "[kernels]") {
  // Q, K, V and the output are blocks of larger matrices whose other elements are NaN: a read
  // past a row's end would turn the output into NaN; a write past it would show in the frame.
  auto gen = rng(500);
  for (const Index dv : {Index(13), Index(16), Index(32)}) {  // 16, 32: V is read in place, not padded
  CAPTURE(dv);
  const Index nq = 21, nk = 35, dk = 19;
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const Matrix<double> Q = random_matrix<double>(nq, dk, gen), K = random_matrix<double>(nk, dk, gen),
                       V = random_matrix<double>(nk, dv, gen);
  const Expected expected = reference(Matrix<float>(Q.cast<float>()), Matrix<float>(K.cast<float>()),
                                      Matrix<float>(V.cast<float>()), 1.0 / std::sqrt(double(dk)), MaskSpec{});
  const auto framed = [&](const Matrix<double>& m) {
    Matrix<float> frame = Matrix<float>::Constant(m.rows() + 2, m.cols() + 5, float(nan));
    frame.block(1, 2, m.rows(), m.cols()) = m.cast<float>();
    return frame;
  };
  const Matrix<float> q = framed(Q), k = framed(K), v = framed(V);
  for (const sdpa::Kernel kernel : all_kernels()) {
    Matrix<float> out = Matrix<float>::Constant(nq + 2, dv + 5, -7.0f);
    sdpa::Options options;
    options.kernel = kernel;
    sdpa::attention_into(q.block(1, 2, nq, dk), k.block(1, 2, nk, dk), v.block(1, 2, nk, dv),
                         out.block(1, 2, nq, dv), options);
    check_attention(Matrix<float>(out.block(1, 2, nq, dv)), expected, nk, dk, name(kernel));
    Matrix<float> untouched = out;
    untouched.block(1, 2, nq, dv).setConstant(-7.0f);
    CHECK((untouched.array() == -7.0f).all());
  }
  }
}

TEST_CASE("a fully masked row is exactly 0 even when values it cannot see are infinite", "[kernels]") {
  auto gen = rng(550);
  const Matrix<float> Q = random_matrix<float>(8, 16, gen), K = random_matrix<float>(70, 16, gen);
  Matrix<float> V = random_matrix<float>(70, 16, gen);
  V(3, 5) = std::numeric_limits<float>::infinity();  // seen by no row below
  MaskSpec mask;
  mask.lengths = {3, 0, 2, 3, 0, 1, 2, 0};
  for (const sdpa::Kernel kernel : all_kernels())
    for (const Index query_rows : {Index(0), Index(1), Index(8)}) {
      sdpa::Options options = mask.options(kernel);
      options.blocks.query_rows = query_rows;
      const Matrix<float> out = sdpa::attention(Q, K, V, options);
      CAPTURE(name(kernel), query_rows);
      for (const Index i : {1, 4, 7}) CHECK((out.row(i).array() == 0.0f).all());
      // (Rows that do see keys may be NaN: 0 * Inf for the masked key 3, as in P V.)
    }
}

TEST_CASE("every path's weights sum to 1: attention over all-ones values is 1", "[kernels]") {
  auto gen = rng(560);
  const Matrix<double> Q = random_matrix<double>(37, 24, gen, -3, 3), K = random_matrix<double>(53, 24, gen, -3, 3);
  const Matrix<double> ones = Matrix<double>::Ones(53, 16);
  for (const bool causal : {false, true}) {
    MaskSpec mask;
    mask.causal = causal;
    mask.lengths = {40};
    check_all_paths<float>(Q, K, ones, mask);
    check_all_paths<double>(Q, K, ones, mask);
  }
}

TEST_CASE("column-major and expression inputs give the same result as row-major ones", "[kernels]") {
  auto gen = rng(600);
  const Matrix<float> Q = random_matrix<float>(9, 8, gen), K = random_matrix<float>(11, 8, gen),
                      V = random_matrix<float>(11, 6, gen);
  const Eigen::MatrixXf Qc = Q, Kc = K, Vc = V;  // column-major: evaluated into row-major once
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    const Matrix<float> a = sdpa::attention(Q, K, V, options);
    CHECK(a == sdpa::attention(Qc, Kc, Vc, options));
    CHECK(a == sdpa::attention(Q * 1.0f, K.block(0, 0, 11, 8), V.array().matrix(), options));
  }
}

TEST_CASE("empty sequences: no queries gives an empty output, no keys gives zeros", "[kernels]") {
  auto gen = rng(700);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options options;
    options.kernel = kernel;
    const Matrix<float> none = sdpa::attention(Matrix<float>(0, 4), random_matrix<float>(5, 4, gen),
                                               random_matrix<float>(5, 3, gen), options);
    CHECK(none.rows() == 0);
    CHECK(none.cols() == 3);
    const Matrix<float> no_keys =
        sdpa::attention(random_matrix<float>(6, 4, gen), Matrix<float>(0, 4), Matrix<float>(0, 3), options);
    REQUIRE(no_keys.rows() == 6);
    CHECK((no_keys.array() == 0.0f).all());
  }
}

TEST_CASE("the SIMD path of every ISA this build and CPU have, in one run", "[kernels]") {
  // CTest runs each [kernels] case once per ISA (SDPA_ISA); this one switches with set_isa
  // in one process, as a program choosing its kernels at run time would.
  auto gen = rng(800);
  const sdpa::Isa chosen = sdpa::isa();
  for (const sdpa::Isa isa : sdpa::compiled_isas()) {
    if (!sdpa::cpu_supports(isa)) {
      WARN("not run on this CPU: " << sdpa::isa_name(isa));
      continue;
    }
    sdpa::set_isa(isa);
    REQUIRE(sdpa::isa() == isa);
    for (const bool causal : {false, true})
      for (const Index d : {Index(1), Index(5), Index(16), Index(64)}) {
        const Matrix<float> Q = random_matrix<float>(23, d, gen), K = random_matrix<float>(41, d, gen),
                            V = random_matrix<float>(41, d + 3, gen);
        MaskSpec mask;
        mask.causal = causal;
        sdpa::Options options = mask.options(sdpa::Kernel::Simd);
        const Matrix<float> out = sdpa::attention(Q, K, V, options);
        check_attention(out, reference(Q, K, V, 1.0 / std::sqrt(double(d)), mask), 41, d,
                        std::string("Simd<") + sdpa::isa_name(isa) + ">");
      }
  }
  sdpa::set_isa(chosen);
}

TEST_CASE("results do not depend on the thread count or the thread pool", "[kernels][threads]") {
  auto gen = rng(900);
  const Matrix<float> Q = random_matrix<float>(301, 64, gen), K = random_matrix<float>(257, 64, gen),
                      V = random_matrix<float>(257, 64, gen);
  const Matrix<double> Qd = Q.cast<double>(), Kd = K.cast<double>(), Vd = V.cast<double>();
  // A user pool: runs the ranges on std::threads in reverse order.
  const sdpa::ParallelFor pool = [](Index count, const std::function<void(Index, Index)>& body) {
    std::vector<std::thread> workers;
    for (Index item = count; item-- > 0;) workers.emplace_back([&body, item] { body(item, item + 1); });
    for (auto& worker : workers) worker.join();
  };
  for (const sdpa::Kernel kernel : all_kernels())
    for (const bool causal : {false, true}) {
      sdpa::Options options;
      options.kernel = kernel;
      options.causal = causal;
      options.threads = 1;
      const Matrix<float> serial = sdpa::attention(Q, K, V, options);
      const Matrix<double> serial_d = sdpa::attention(Qd, Kd, Vd, options);
      for (const int threads : {2, 3, 4}) {
        options.threads = threads;
        CAPTURE(name(kernel), causal, threads);
        CHECK(sdpa::attention(Q, K, V, options) == serial);
        CHECK(sdpa::attention(Qd, Kd, Vd, options) == serial_d);
      }
      options.parallel_for = pool;
      CAPTURE(name(kernel), causal);
      CHECK(sdpa::attention(Q, K, V, options) == serial);
      options.blocks = {7, 5};  // tiles that straddle the causal diagonal differently
      options.threads = 1;
      options.parallel_for = nullptr;
      const Matrix<float> small_tiles = sdpa::attention(Q, K, V, options);
      options.threads = 2;
      CHECK(sdpa::attention(Q, K, V, options) == small_tiles);
    }
}

TEST_CASE("a second call started on the caller's thread while it waits does not disturb the first", "[kernels][threads]") {
  // A thread pool that runs queued work while the caller waits (as work-stealing pools do)
  // can start another attention call on the calling thread in the middle of a parallel_for.
  auto gen = rng(950);
  const Matrix<float> Q = random_matrix<float>(40, 16, gen), K = random_matrix<float>(90, 16, gen),
                      V = random_matrix<float>(90, 16, gen), K2 = random_matrix<float>(90, 16, gen);
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options plain;
    plain.kernel = kernel;
    const Matrix<float> expected = sdpa::attention(Q, K, V, plain), expected2 = sdpa::attention(Q, K2, V, plain);
    Matrix<float> inner;
    sdpa::Options nested = plain;
    nested.parallel_for = [&](Index count, const std::function<void(Index, Index)>& body) {
      inner = sdpa::attention(Q, K2, V, plain);  // "queued work" run on this thread first
      body(0, count);
    };
    CAPTURE(name(kernel));
    CHECK(sdpa::attention(Q, K, V, nested) == expected);
    CHECK(inner == expected2);
  }
}

}  // namespace test_kernels
