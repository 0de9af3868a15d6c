#!/usr/bin/env bash
# tests/isa_mix/check_symbols.sh OBJECT... - objects built for different ISAs may share a
# weak (inline or template) symbol that mentions sdpa only if its code cannot depend on the
# ISA: a member of one of sdpa's plain data types (or their type info), or a standard
# library template over them (std::vector<sdpa::Isa>). Everything else carries its ISA's
# namespace (sdpa::isa_avx2::..., sdpa::isa_scalar_dispatch::...), so a shared symbol that
# names one means two objects built the same sdpa for different ISAs: the linker would keep
# one body for both. Fails, listing the offenders.
set -euo pipefail
neutral='^(sdpa::(MatrixView|TensorView|FusedQKV|Options|Bias|BlockConfig|KVCache|AttentionWeights|unsupported_cpu)([<:]|$))'
weak() { nm -C --defined-only "$1" | awk '$2 ~ /^[WVuw]$/ { $1 = ""; $2 = ""; sub(/^  /, ""); print }' | grep -E '(^|[^A-Za-z_])sdpa::' | sort -u; }
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
i=0
for object in "$@"; do weak "$object" > "$tmp/$i"; i=$((i + 1)); done
shared=$(cat "$tmp"/* | sort | uniq -d)
total=$(printf '%s\n' "$shared" | grep -c . || true)
# Offenders: anything inside an ISA namespace, and any other sdpa-scoped symbol that is not a
# member of the neutral types (after "typeinfo for " and the like).
offending=$(printf '%s\n' "$shared" | sed -E 's/^(typeinfo name for|typeinfo for|vtable for|guard variable for) //' |
  grep -E 'sdpa::isa_|^sdpa::' | grep -v -E "$neutral" || true)
echo "weak sdpa symbols per object: $(wc -l "$tmp"/* | head -n -1 | awk '{print $1}' | tr '\n' ' ')"
echo "shared by two or more objects: $total, all of ISA-neutral data types unless listed below"
if [ -n "$offending" ]; then
  echo "ISA-dependent symbols shared between objects built for different ISAs:"
  printf '  %s\n' "$offending"
  exit 1
fi
echo "ok"
