#include "attend.inc"
SDPA_MIX_ATTEND(attend_avx2_build)
