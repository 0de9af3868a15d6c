// sdpa/simd/simd.hpp - every Vec specialisation this build has, and exp on top of them.
#pragma once

#include "arch.hpp"
#include "avx2.hpp"
#include "avx512.hpp"
#include "exp.hpp"
#include "neon.hpp"
#include "scalar.hpp"
