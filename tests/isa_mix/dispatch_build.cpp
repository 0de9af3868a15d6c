#include "attend.inc"
SDPA_MIX_ATTEND(attend_dispatch_build)
