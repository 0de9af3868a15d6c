// sdpa/alibi.hpp - the standard ALiBi slopes (Press et al., "Train Short, Test Long").
/// \file
/// alibi_slopes(): the geometric slopes ALiBi models were trained with, for Options::alibi_slopes.
#pragma once

#include "config.hpp"
#include "views.hpp"

#include <cmath>
#include <stdexcept>
#include <string>
#include <vector>

SDPA_BEGIN_NAMESPACE

/// The ALiBi slopes of `heads` heads, as the paper's reference code computes them. For H a
/// power of two, head h (from 0) has slope 2^(-8 (h + 1) / H): 1/2, 1/4, ..., 1/256 for H = 8.
/// Otherwise, with n the largest power of two below H, the n slopes of n heads come first,
/// then every other slope of 2n heads (the 1st, 3rd, ...) until there are H:
///
///     options.alibi_slopes = sdpa::alibi_slopes(12);  // 2^-1, ..., 2^-8, 2^-0.5, 2^-1.5, 2^-2.5, 2^-3.5
inline std::vector<double> alibi_slopes(Index heads) {
  if (heads < 1) throw std::invalid_argument("sdpa::alibi_slopes: heads is " + std::to_string(heads) + ": it must be at least 1");
  Index n = 1;
  while (n * 2 <= heads) n *= 2;
  std::vector<double> slopes;
  for (Index h = 0; h < n; ++h) slopes.push_back(std::exp2(-8.0 * double(h + 1) / double(n)));
  for (Index h = 0; Index(slopes.size()) < heads; h += 2) slopes.push_back(std::exp2(-8.0 * double(h + 1) / double(2 * n)));
  return slopes;
}

SDPA_END_NAMESPACE
