// sdpa/kernels/target-inl.hpp - the kernels of one target, in dependency order.
//
// kernels/targets.hpp includes this once per target, inside that target's namespace (where
// `Arch` names its vector tag and `kIsa` its Isa) and attributes. No include guard: that is
// the point. Every file listed is per-target in the same way; none includes anything.
#include "../simd/exp-inl.hpp"
#include "online_softmax-inl.hpp"
#include "tiled_loop-inl.hpp"
#include "blocked-inl.hpp"
#include "simd-inl.hpp"
#include "bf16_tiles-inl.hpp"
#include "batched-inl.hpp"
#include "backward-inl.hpp"
#include "testing-inl.hpp"
#include "entry-inl.hpp"
