// sdpa/sdpa.hpp - the only header users need.
//
// sdpa: scaled dot-product attention on the CPU. O = softmax(scale Q K^T + mask) V.
// See README.md for the conventions (layout, causal alignment, masks, errors).
#pragma once

#include "attention.hpp"
#include "batched.hpp"
#include "kv_cache.hpp"
#include "options.hpp"
#include "projection.hpp"
#include "self_attention.hpp"
#include "version.hpp"
#include "views.hpp"
