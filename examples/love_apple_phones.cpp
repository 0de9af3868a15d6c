// love_apple_phones.cpp - self-attention on three tokens, by hand and with sdpa, every number shown.
//
// Attention is a soft dictionary lookup. Every token i turns its embedding x_i into
//
//     a query  q_i = x_i Wq    "what am I looking for?"
//     a key    k_i = x_i Wk    "what do I offer?"  (matched against the queries)
//     a value  v_i = x_i Wv    "what do I contribute if I am picked?"
//
// Token i scores every key,       s_ij = q_i . k_j / sqrt(d_k),
// turns the scores into weights,  w_ij = exp(s_ij) / sum_l exp(s_il)   (softmax: >= 0, sum to 1),
// and becomes a blend of values,  o_i  = sum_j w_ij v_j.
//
// A dictionary returns the value of the one key that matches exactly; attention returns every
// value at once, each weighted by how well its key matches the query.
//
// The sentence is "love Apple phones". On its own "Apple" is ambiguous: fruit or company? Its
// query asks "what kind of thing am I?", the key of "phones" answers "tech", and so after
// attention Apple's representation has moved from half fruit / half tech to mostly tech.
//
//     usage: love_apple_phones [heatmap.svg]        (default: love_apple_phones.svg)
//
// Every hand computation is cross-checked against the library; the exit code is 1 if any check
// fails, so running this example under CTest is a real test.
#include <sdpa/sdpa.hpp>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <fstream>
#include <string>
#include <vector>

namespace {

using Mat = sdpa::Matrix<float>;
using sdpa::Index;

const std::vector<std::string> kTokens = {"love", "Apple", "phones"};
constexpr Index kApple = 1;          // the row we follow
constexpr double kTolerance = 1e-5;  // float arithmetic, numbers of order 1

int g_failed_checks = 0;

// One cross-check: prints the difference and remembers a failure (NaN fails too).
void check(const std::string& what, double difference) {
  const bool ok = difference <= kTolerance;
  std::printf("  check %-58s %-6s (max |difference| %.1e)\n", what.c_str(), ok ? "ok" : "FAILED", difference);
  if (!ok) ++g_failed_checks;
}

// A claim the comments make about the example; prints it and remembers a failure.
void expect(const std::string& claim, bool holds) {
  std::printf("  check %-58s %s\n", claim.c_str(), holds ? "ok" : "FAILED");
  if (!holds) ++g_failed_checks;
}

// A matrix with one row per token and named columns.
void print_matrix(const std::string& title, const Mat& m, const std::vector<std::string>& columns) {
  std::printf("\n%s\n%8s", title.c_str(), "");
  for (const auto& c : columns) std::printf(" %8s", c.c_str());
  std::printf("\n");
  for (Index i = 0; i < m.rows(); ++i) {
    std::printf("%8s", kTokens[i].c_str());
    for (Index j = 0; j < m.cols(); ++j) std::printf(" %8.3f", m(i, j));
    std::printf("\n");
  }
}

std::string vec(const Eigen::Ref<const Eigen::RowVectorXf>& v) {
  std::string s = "[";
  char buffer[32];
  for (Index j = 0; j < v.size(); ++j) {
    std::snprintf(buffer, sizeof buffer, "%s%.3f", j ? ", " : "", v(j));
    s += buffer;
  }
  return s + "]";
}

std::string bar(double weight, int width = 40) { return std::string(std::lround(weight * width), '#'); }

// softmax, the textbook way: subtracting the max changes nothing mathematically (every exp is
// divided by the same factor) but keeps exp from overflowing when scores are large.
std::vector<double> softmax(const std::vector<double>& scores) {
  const double max = *std::max_element(scores.begin(), scores.end());
  std::vector<double> weights;
  double sum = 0;
  for (double s : scores) sum += weights.emplace_back(std::exp(s - max));
  for (double& w : weights) w /= sum;
  return weights;
}

// The attention weights as an SVG heatmap: rows = queries, columns = keys, value in each cell.
bool write_heatmap(const std::string& path, const Mat& P) {
  std::ofstream svg(path);
  if (!svg) return false;
  const int n = int(P.rows()), cell = 90, left = 130, top = 110;
  const int width = left + n * cell + 50, height = top + n * cell + 60;
  char buffer[512];
  const auto put = [&](const char* format, auto... args) {
    std::snprintf(buffer, sizeof buffer, format, args...);
    svg << buffer << '\n';
  };
  put("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" viewBox=\"0 0 %d %d\" "
      "font-family=\"DejaVu Sans, Helvetica, Arial, sans-serif\">",
      width, height, width, height);
  put("<rect width=\"%d\" height=\"%d\" fill=\"white\"/>", width, height);
  put("<text x=\"%d\" y=\"30\" text-anchor=\"middle\" font-size=\"17\" font-weight=\"bold\">"
      "Attention weights softmax(QK\u1d40/\u221ad\u2096)</text>",
      width / 2);
  put("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\" fill=\"#555\">key (what is looked at)</text>",
      left + n * cell / 2, top - 45);
  put("<text x=\"0\" y=\"0\" transform=\"translate(22 %d) rotate(-90)\" text-anchor=\"middle\" font-size=\"13\" "
      "fill=\"#555\">query (who is looking)</text>",
      top + n * cell / 2);
  for (int j = 0; j < n; ++j)
    put("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"15\">%s</text>", left + j * cell + cell / 2,
        top - 12, kTokens[j].c_str());
  for (int i = 0; i < n; ++i) {
    put("<text x=\"%d\" y=\"%d\" text-anchor=\"end\" font-size=\"15\">%s</text>", left - 12,
        top + i * cell + cell / 2 + 5, kTokens[i].c_str());
    for (int j = 0; j < n; ++j) {
      const double w = std::clamp(double(P(i, j)), 0.0, 1.0);
      // white (weight 0) to blue (weight 1); white digits once the cell is dark enough
      const int r = int(std::lround(255 - w * (255 - 33))), g = int(std::lround(255 - w * (255 - 113))),
                b = int(std::lround(255 - w * (255 - 181)));
      const bool dark = 0.299 * r + 0.587 * g + 0.114 * b < 120;
      put("<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"rgb(%d,%d,%d)\" stroke=\"#999\"/>",
          left + j * cell, top + i * cell, cell, cell, r, g, b);
      put("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"19\" font-weight=\"bold\" "
          "fill=\"%s\">%.2f</text>",
          left + j * cell + cell / 2, top + i * cell + cell / 2 + 7, dark ? "white" : "black", w);
    }
  }
  put("<text x=\"%d\" y=\"%d\" text-anchor=\"middle\" font-size=\"12\" fill=\"#555\">"
      "each row sums to 1: how much that query reads from each key</text>",
      width / 2, top + n * cell + 30);
  svg << "</svg>\n";
  return bool(svg);
}

int run(const std::string& svg_path) {
  std::printf("Self-attention as a soft dictionary lookup: \"love Apple phones\"\n");

  // ---- 1. Embeddings: one row per token, d_model = 4 hand-made features ----------------------
  // Features:             fruit  tech  feeling  name
  Mat X(3, 4);
  X << 0.0f, 0.0f, 1.0f, 0.0f,   // love:   a feeling (a verb), nothing else
      0.5f, 0.5f, 0.0f, 1.0f,    // Apple:  a name; on its own half fruit, half tech: ambiguous
      0.0f, 1.0f, 0.0f, 0.0f;    // phones: a tech product
  print_matrix("X: the embeddings (tokens x d_model)", X, {"fruit", "tech", "feeling", "name"});

  // ---- 2. Projections: d_model = 4 -> d_k = 3 (query/key space), d_v = 3 (value space) ------
  // Keys say what a token offers, in three "topics": tech, opinion, name.
  Mat Wk(4, 3);
  Wk << 0, 0, 0,   // fruit   -> (not a topic anyone looks for here)
      1, 0, 0,     // tech    -> offers "tech"
      0, 1, 0,     // feeling -> offers "opinion"
      0, 0, 1;     // name    -> offers "name"
  // Queries say which topics a token looks for, in the same three coordinates.
  Mat Wq(4, 3);
  Wq << 0, 0, 0,   // fruit   -> looks for nothing
      0, 0, 2,     // tech    -> a product looks for its brand: a name
      1, 0, 1,     // feeling -> a verb looks for its object: tech things and names
      2, 1, -2;    // name    -> a name looks for what kind of thing it is (tech!), a bit for
                   //            opinions about it, and away from other names (such as itself)
  // Values carry the meaning that flows: fruit, tech and feeling pass through; "name" does not.
  Mat Wv(4, 3);
  Wv << 1, 0, 0,   // fruit
      0, 1, 0,     // tech
      0, 0, 1,     // feeling
      0, 0, 0;     // name
  const Mat Q = sdpa::project(X, Wq);
  const Mat K = sdpa::project(X, Wk);
  const Mat V = sdpa::project(X, Wv);
  const Index d_k = Q.cols();
  print_matrix("Q = X Wq: what each token looks for", Q, {"tech", "opinion", "name"});
  print_matrix("K = X Wk: what each token offers", K, {"tech", "opinion", "name"});
  print_matrix("V = X Wv: what each token contributes", V, {"fruit", "tech", "feeling"});

  // ---- 3. Apple's scores, by hand: s_j = q_Apple . k_j / sqrt(d_k) ----------------------------
  const double scale = 1.0 / std::sqrt(double(d_k));
  std::printf("\nApple's scaled scores s_j = q_Apple . k_j / sqrt(%ld), q_Apple = %s\n", long(d_k),
              vec(Q.row(kApple)).c_str());
  std::vector<double> scores;
  for (Index j = 0; j < K.rows(); ++j) {
    double dot = 0;
    for (Index c = 0; c < d_k; ++c) dot += double(Q(kApple, c)) * double(K(j, c));
    scores.push_back(dot * scale);
    std::printf("  k_%-7s = %s   dot = %6.3f   s = %6.3f\n", kTokens[j].c_str(), vec(K.row(j)).c_str(), dot,
                scores.back());
  }

  // ---- 4. The weights: softmax of the scores -------------------------------------------------
  const Mat P = sdpa::attention_weights(Q, K);  // all three rows: the 3x3 weight matrix
  const std::vector<double> hand = softmax(scores);
  std::printf("\nApple's attention weights w_j = softmax(s)_j, from sdpa::attention_weights(Q, K):\n");
  std::printf("  %-8s %8s %8s\n", "key", "score", "weight");
  double sum = 0;
  for (Index j = 0; j < P.cols(); ++j) {
    std::printf("  %-8s %8.3f %8.4f  %s\n", kTokens[j].c_str(), scores[j], P(kApple, j), bar(P(kApple, j)).c_str());
    sum += P(kApple, j);
  }
  std::printf("  %-8s %8s %8.4f\n", "sum", "", sum);

  // The library does not hand out its scores, but the weights determine them up to a constant:
  // log w_j - log w_l = s_j - s_l (softmax forgets only a shift common to the whole row).
  double score_difference = 0, weight_difference = 0, sum_difference = 0;
  for (Index j = 0; j < P.cols(); ++j) {
    const double library = std::log(double(P(kApple, j))) - std::log(double(P(kApple, 0)));
    score_difference = std::max(score_difference, std::abs(library - (scores[j] - scores[0])));
    weight_difference = std::max(weight_difference, std::abs(double(P(kApple, j)) - hand[j]));
  }
  for (Index i = 0; i < P.rows(); ++i) sum_difference = std::max(sum_difference, std::abs(P.row(i).sum() - 1.0));
  check("hand scores vs library (log w_j - log w_love)", score_difference);
  check("hand softmax vs sdpa::attention_weights", weight_difference);
  check("every row of the weights sums to 1", sum_difference);
  expect("Apple attends most to phones, then love, least to itself",
         P(kApple, 2) > P(kApple, 0) && P(kApple, 0) > P(kApple, 1));

  print_matrix("All the weights P = softmax(Q K^T / sqrt(d_k)) (rows: queries, columns: keys)", P, kTokens);

  // ---- 5. Apple's new representation: the weighted blend of the value rows ------------------
  Eigen::RowVectorXf blend = Eigen::RowVectorXf::Zero(V.cols());
  for (Index j = 0; j < V.rows(); ++j) blend += P(kApple, j) * V.row(j);
  const Mat O = sdpa::attention(Q, K, V);
  std::printf("\nApple's new representation o_Apple = sum_j w_j v_j:\n  ");
  for (Index j = 0; j < V.rows(); ++j) std::printf("%s%.3f * v_%s", j ? " + " : "", P(kApple, j), kTokens[j].c_str());
  std::printf(" = %s\n", vec(blend).c_str());
  for (Index j = 0; j < V.rows(); ++j)
    std::printf("    %s %.3f * %s   (v_%s)\n", j ? "+" : " ", P(kApple, j), vec(V.row(j)).c_str(), kTokens[j].c_str());
  std::printf("    = %s\n", vec(blend).c_str());
  std::printf("  sdpa::attention(Q, K, V), row Apple: %s\n", vec(O.row(kApple)).c_str());
  std::printf("  Apple before: %s (fruit, tech, feeling) -> after: %s: mostly tech now.\n",
              vec(V.row(kApple)).c_str(), vec(O.row(kApple)).c_str());
  check("hand blend vs sdpa::attention row Apple", (blend - O.row(kApple)).cwiseAbs().maxCoeff());
  expect("after attention Apple is more tech than fruit", O(kApple, 1) > 2 * O(kApple, 0));

  // Every kernel computes the same function; they differ only in speed and memory.
  const Mat PV = P * V;
  for (const auto& [kernel, name] : {std::pair{sdpa::Kernel::Reference, "Reference"},
                                     std::pair{sdpa::Kernel::Blocked, "Blocked"}, std::pair{sdpa::Kernel::Simd, "Simd"}}) {
    sdpa::Options options;
    options.kernel = kernel;
    check(std::string("P V vs sdpa::attention, Kernel::") + name,
          (sdpa::attention(Q, K, V, options) - PV).cwiseAbs().maxCoeff());
  }

  // ---- 6. Sharper and sharper: from a soft lookup to a hard one ------------------------------
  // Multiplying the scores by a growing factor leaves their order unchanged but widens their
  // gaps, and exp turns gaps into ratios: the top key takes almost all the weight. In the limit
  // the softmax is an argmax and attention is an ordinary dictionary lookup returning v_phones.
  std::printf("\nSharpening Apple's lookup: options.scale = factor / sqrt(d_k)\n");
  std::printf("  %6s %8s %8s %8s %11s   %s\n", "factor", "love", "Apple", "phones", "max weight", "o_Apple");
  double sweep_difference = 0;
  double previous_max = 0;
  bool sharpens = true;
  for (double factor : {0.25, 1.0, 4.0, 16.0, 64.0}) {
    sdpa::Options options;
    options.scale = factor * scale;
    const Mat Ps = sdpa::attention_weights(Q, K, options);
    const Mat Os = sdpa::attention(Q, K, V, options);
    std::vector<double> sharpened;
    for (double s : scores) sharpened.push_back(factor * s);
    const std::vector<double> expected = softmax(sharpened);
    for (Index j = 0; j < Ps.cols(); ++j)
      sweep_difference = std::max(sweep_difference, std::abs(double(Ps(kApple, j)) - expected[j]));
    const double max_weight = Ps.row(kApple).maxCoeff();
    sharpens = sharpens && max_weight >= previous_max;
    previous_max = max_weight;
    std::printf("  %6g %8.4f %8.4f %8.4f %11.4f   %s\n", factor, Ps(kApple, 0), Ps(kApple, 1), Ps(kApple, 2),
                max_weight, vec(Os.row(kApple)).c_str());
  }
  std::printf("  v_phones = %s: the hard lookup's answer.\n", vec(V.row(2)).c_str());
  check("hand softmax vs library at every scale", sweep_difference);
  expect("the max weight grows with the scale, to ~1 (one-hot)", sharpens && previous_max > 0.999);

  // ---- 7. The picture -------------------------------------------------------------------------
  if (write_heatmap(svg_path, P)) {
    std::printf("\nWrote the 3x3 attention weights as an SVG heatmap to %s\n", svg_path.c_str());
  } else {
    std::printf("\nFAILED to write the SVG heatmap to %s\n", svg_path.c_str());
    ++g_failed_checks;
  }

  if (g_failed_checks) {
    std::printf("\n%d check(s) FAILED\n", g_failed_checks);
    return 1;
  }
  std::printf("\nAll checks passed.\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc > 1 ? argv[1] : "love_apple_phones.svg");
  } catch (const std::exception& e) {
    std::printf("error: %s\n", e.what());
    return 1;
  }
}
