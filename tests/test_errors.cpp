// Every documented bad input throws std::invalid_argument naming the argument and the shapes,
// and leaves the output untouched.
#include "catch.hpp"
#include "support.hpp"

namespace test_errors {  // this file's names, apart from the other files' in a unity build

using namespace sdpa_test;

namespace {

struct Inputs {
  Matrix<float> Q = Matrix<float>::Ones(4, 8), K = Matrix<float>::Ones(6, 8), V = Matrix<float>::Ones(6, 3);
};

/// attention_into with a sentinel-filled output: a throw must leave it as it was.
void require_invalid_untouched(const Inputs& in, const sdpa::Options& options,
                               std::initializer_list<const char*> fragments) {
  for (const sdpa::Kernel kernel : all_kernels()) {
    sdpa::Options o = options;
    o.kernel = kernel;
    Matrix<float> out = Matrix<float>::Constant(in.Q.rows(), in.V.cols(), 42.0f);
    CAPTURE(name(kernel));
    require_invalid([&] { sdpa::attention_into(in.Q, in.K, in.V, out, o); }, fragments);
    CHECK((out.array() == 42.0f).all());
    require_invalid([&] { (void)sdpa::attention(in.Q, in.K, in.V, o); }, fragments);
  }
}

}  // namespace

TEST_CASE("mismatched shapes name both shapes", "[errors]") {
  Inputs in;
  in.K = Matrix<float>::Ones(6, 5);
  require_invalid_untouched(in, {}, {"sdpa::attention", "Q is 4x8", "K is 6x5", "head dims"});
  in = Inputs{};
  in.V = Matrix<float>::Ones(7, 3);
  require_invalid_untouched(in, {}, {"K is 6x8", "V is 7x3", "same number of rows"});
}

TEST_CASE("empty head dims", "[errors]") {
  Inputs in;
  in.Q = Matrix<float>(4, 0);
  in.K = Matrix<float>(6, 0);
  require_invalid_untouched(in, {}, {"Q is 4x0", "K is 6x0", "d_k must not be 0"});
  in = Inputs{};
  in.V = Matrix<float>(6, 0);
  Matrix<float> out(4, 0);
  require_invalid([&] { sdpa::attention_into(in.Q, in.K, in.V, out); }, {"V is 6x0", "d_v"});
}

TEST_CASE("scale must be positive and finite", "[errors]") {
  for (const double bad : {0.0, -1.0, std::numeric_limits<double>::infinity(), std::numeric_limits<double>::quiet_NaN()}) {
    sdpa::Options options;
    options.scale = bad;
    require_invalid_untouched(Inputs{}, options, {"options.scale", "positive and finite"});
  }
}

TEST_CASE("masks of the wrong shape", "[errors]") {
  const Matrix<bool> mask = Matrix<bool>::Constant(4, 5, true);
  sdpa::Options options;
  options.mask = mask;
  require_invalid_untouched(Inputs{}, options, {"options.mask is 4x5", "scores Q K^T are 4x6", "Q is 4x8", "K is 6x8"});
  const Matrix<float> bias = Matrix<float>::Zero(2, 6);
  sdpa::Options with_bias;
  with_bias.bias = bias;
  require_invalid_untouched(Inputs{}, with_bias, {"options.bias is 2x6", "4x6 or 1x6"});
}

TEST_CASE("key lengths of the wrong count or out of range", "[errors]") {
  sdpa::Options options;
  options.key_lengths = {1, 2};
  require_invalid_untouched(Inputs{}, options, {"options.key_lengths has 2 entries", "Q is 4x8"});
  options.key_lengths = {1, 2, 7, 0};
  require_invalid_untouched(Inputs{}, options, {"options.key_lengths[2] is 7", "[0, 6]"});
  options.key_lengths = {-1};
  require_invalid_untouched(Inputs{}, options, {"options.key_lengths[0] is -1"});
}

TEST_CASE("bad block sizes and thread counts", "[errors]") {
  sdpa::Options options;
  options.blocks = {-1, 4};
  require_invalid_untouched(Inputs{}, options, {"options.blocks"});
  options = {};
  options.threads = -2;
  require_invalid_untouched(Inputs{}, options, {"options.threads is -2"});
}

TEST_CASE("an output of the wrong shape, or overlapping an input", "[errors]") {
  Inputs in;
  Matrix<float> out = Matrix<float>::Constant(4, 4, 42.0f);
  require_invalid([&] { sdpa::attention_into(in.Q, in.K, in.V, out); }, {"sdpa::attention_into", "out is 4x4", "4x3"});
  CHECK((out.array() == 42.0f).all());
  // Writing the result over V while V is still being read would corrupt it.
  Matrix<float> kv = Matrix<float>::Ones(6, 11);
  require_invalid([&] { sdpa::attention_into(in.Q, kv.leftCols(8), kv.rightCols(3), kv.block(0, 8, 4, 3)); },
                  {"overlaps V"});
  // Column slices of one buffer that share no element are fine: Q | K | V | out side by side.
  Matrix<float> fused = Matrix<float>::Ones(6, 8 + 8 + 3 + 3);
  sdpa::attention_into(fused.leftCols(8).topRows(4), fused.middleCols(8, 8), fused.middleCols(16, 3),
                       fused.block(0, 19, 4, 3));
  CHECK((fused.block(0, 19, 4, 3).array() == 1.0f).all());  // identical keys: the mean of V's ones
}

TEST_CASE("attention_weights validates too", "[errors]") {
  require_invalid([] { (void)sdpa::attention_weights(Matrix<double>::Ones(3, 4), Matrix<double>::Ones(5, 2)); },
                  {"sdpa::attention_weights", "Q is 3x4", "K is 5x2"});
}

TEST_CASE("projections and layers name the weights at fault", "[errors]") {
  require_invalid([] { (void)sdpa::project(Matrix<float>::Ones(3, 4), Matrix<float>::Ones(5, 2)); },
                  {"sdpa::project", "X is 3x4", "W is 5x2"});
  require_invalid([] { (void)sdpa::project(Matrix<float>::Ones(3, 4), Matrix<float>::Ones(4, 2), sdpa::RowVector<float>::Ones(3)); },
                  {"b is 1x3", "W is 4x2"});
  Matrix<float> XW = Matrix<float>::Ones(4, 4);
  require_invalid([&] { sdpa::project_into(XW.leftCols(2), Matrix<float>::Ones(2, 2), {}, XW.middleCols(1, 2)); },
                  {"sdpa::project_into", "out (4x2) overlaps X, W or b"});
  Matrix<float> Y(4, 2);
  sdpa::project_into(XW.leftCols(2), Matrix<float>::Ones(2, 2), sdpa::RowVector<float>::Ones(2), Y);
  CHECK((Y.array() == 3.0f).all());
  const Matrix<float> W = Matrix<float>::Ones(8, 8);
  require_invalid([&] { sdpa::SelfAttention<float>(W, W, W, 3); }, {"sdpa::SelfAttention", "Wq is 8x8", "3 heads"});
  require_invalid([&] { sdpa::SelfAttention<float>(W, Matrix<float>::Ones(8, 4), W); }, {"Wk is 8x4"});
  require_invalid([&] { sdpa::SelfAttention<float>(W, W, W, 0); }, {"heads is 0"});
  sdpa::AttentionWeights<float> w{W, W, W, {}, {}, {}, Matrix<float>::Ones(4, 8), {}};
  require_invalid([&] { sdpa::SelfAttention<float> layer(w); }, {"Wo is 4x8", "Wv is 8x8"});
  w.Wo = W;
  w.bq = sdpa::RowVector<float>::Ones(5);
  require_invalid([&] { sdpa::SelfAttention<float> layer(w); }, {"bq is 1x5"});

  const sdpa::SelfAttention<float> layer(W, W, W, 2);
  require_invalid([&] { (void)layer.forward(Matrix<float>::Ones(5, 7)); }, {"SelfAttention::forward", "X is 5x7"});
  require_invalid([&] { (void)layer.forward(Matrix<float>::Ones(5, 8), Matrix<float>::Ones(3, 6)); }, {"memory is 3x6"});
  const sdpa::SelfAttention<float> wide_kv(W, Matrix<float>::Ones(6, 8), Matrix<float>::Ones(6, 8), 2);
  require_invalid([&] { (void)wide_kv.forward(Matrix<float>::Ones(5, 8)); }, {"X is 5x8", "Wk is 6x8"});
  const Matrix<bool> mask = Matrix<bool>::Constant(5, 4, true);
  sdpa::Options options;
  options.mask = mask;
  require_invalid([&] { (void)layer.forward(Matrix<float>::Ones(5, 8), options); }, {"options.mask is 5x4", "5x5"});
}

TEST_CASE("a 2-D call refuses the batched masks it cannot honour", "[errors]") {
  // Silently ignoring them would attend where the caller asked not to.
  const Matrix<bool> allow = Matrix<bool>::Constant(4, 6, false);
  const std::vector<float> bias(4 * 6, 0.0f);
  for (int which = 0; which < 3; ++which) {
    sdpa::Options options;
    const char* field = nullptr;
    if (which == 0) {
      options.batch_mask = sdpa::TensorView<const bool>::bhnd(allow.data(), 1, 1, 4, 6);
      field = "options.batch_mask";
    } else if (which == 1) {
      options.batch_bias = sdpa::TensorView<const float>::bhnd(bias.data(), 1, 1, 4, 6);
      field = "options.batch_bias";
    } else {
      options.sequence_lengths = {3};
      field = "options.sequence_lengths";
    }
    CAPTURE(field);
    require_invalid_untouched(Inputs{}, options, {field, "batched calls", "options.mask"});
    Inputs in;
    require_invalid([&] { (void)sdpa::attention_weights(in.Q, in.K, options); }, {field});
    const sdpa::Vector<float> lse = sdpa::Vector<float>::Zero(4);
    require_invalid([&] { (void)sdpa::attention_weights_from_lse(in.Q, in.K, lse, 0, options); }, {field});
    const auto layer = sdpa::SelfAttention<float>::random(8, 2, 1);
    require_invalid([&] { (void)layer.forward(in.Q, options); }, {"SelfAttention::forward", field});
    sdpa::KVCache<float> cache(1, 2, 4, 4, 16);
    require_invalid([&] { (void)layer.step(in.Q, cache, 0, options); }, {"SelfAttention::step", field});
    CHECK(cache.length(0) == 0);  // refused before the cache was touched
  }
}

}  // namespace test_errors
