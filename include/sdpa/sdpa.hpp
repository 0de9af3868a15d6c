// sdpa/sdpa.hpp - the only header users need.
//
// sdpa: scaled dot-product attention on the CPU. O = softmax(scale Q K^T + mask) V.
// See README.md for the conventions (layout, causal alignment, masks, errors).
/// \file
/// The only header users need: includes the whole public API.
#pragma once

#include "alibi.hpp"
#include "attention.hpp"
#include "backward.hpp"
#include "batched.hpp"
#include "kv_cache.hpp"
#include "options.hpp"
#include "paged_kv_cache.hpp"
#include "projection.hpp"
#include "self_attention.hpp"
#include "varlen.hpp"
#include "version.hpp"
#include "views.hpp"

/// \namespace sdpa
/// Scaled dot-product attention on the CPU: the whole public API. (The functions and types
/// whose code depends on the instruction set live in an inline namespace named after it,
/// such as sdpa::isa_avx2; users never name it.)
