#!/usr/bin/env bash
# tests/isa_mix/check_baseline_code.sh OBJECT - the CPU check of an object built with wider
# flags (here -march=x86-64-v3) must itself use baseline x86-64 instructions only: it runs
# on the older CPU it is there to catch. Fails, printing the offending instructions, if any
# function of the check contains a VEX/EVEX-encoded instruction (all start with "v").
set -euo pipefail
functions='detail::require_built_isa|detail::widest_supported|cpu_supports\(|isa_name\(|detail::disabled_by_environment'
listing=$(objdump -d -C --no-show-raw-insn "$1" | awk -v pattern="$functions" '
  /^[0-9a-f]+ <.*>:$/ { inside = ($0 ~ pattern) ; if (inside) { name = $0; found++ } ; next }
  inside && NF { print name "\t" $0 }
  END { if (!found) print "NO FUNCTIONS FOUND" }')
if printf '%s\n' "$listing" | grep -q "NO FUNCTIONS FOUND"; then
  echo "none of the check's functions is in $1"; exit 1
fi
count=$(printf '%s\n' "$listing" | awk -F'\t' '{print $1}' | sort -u | wc -l)
wide=$(printf '%s\n' "$listing" | grep -P '\t\s*[0-9a-f]+:\s+v[a-z0-9]+\s' || true)
echo "functions of the CPU check in $(basename "$1"): $count"
if [ -n "$wide" ]; then
  echo "vector (VEX/EVEX) instructions in the CPU check:"; printf '%s\n' "$wide" | head -20; exit 1
fi
echo "ok: baseline instructions only"
