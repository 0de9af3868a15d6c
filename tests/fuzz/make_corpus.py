#!/usr/bin/env python3
"""tests/fuzz/make_corpus.py - writes the fuzzer's seed corpus, tests/fuzz/corpus/.

A seed is the header of byte_reader.hpp (one byte per decision; unnamed fields are 0, the
plain choice), 8 bytes of value seed, and optional pokes (an exact special value at an exact
place). The field list is read from byte_reader.hpp and the mutation names from the scenario
headers, so that both stay written once, in C++. Run after changing either, or the seeds below:

    python3 tests/fuzz/make_corpus.py
"""
import pathlib
import re
import struct

HERE = pathlib.Path(__file__).resolve().parent


def snake(name):
    """kQueryRows -> query_rows"""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name[1:]).lower()


def read_fields():
    text = (HERE / "byte_reader.hpp").read_text()
    body = re.search(r"enum Field : std::size_t \{(.*?)\};", text, re.S).group(1)
    names = [snake(n) for n in re.findall(r"^\s*(k\w+),", body, re.M)]
    assert names[-1] != "header_size" and "scenario" in names, names
    return names


def read_mutations(header, array):
    text = (HERE / header).read_text()
    body = re.search(array + r"\[\] = \{(.*?)\};", text, re.S).group(1)
    return re.findall(r'"([^"]+)"', body)


FIELDS = read_fields()
MUTATIONS = {
    "2d": read_mutations("scenario_2d.hpp", "kMutation2DNames"),
    "batched": read_mutations("scenario_batched.hpp", "kMutationBatchedNames"),
    "merge": read_mutations("scenario_merge.hpp", "kMutationMergeNames"),
    "layer": read_mutations("scenario_layer.hpp", "kMutationLayerNames"),
    "backward": read_mutations("scenario_backward.hpp", "kMutationBackwardNames"),
}
SCENARIOS = {"2d": 0, "batched": 1, "merge": 2, "layer": 3, "backward": 4}
# Fields whose value is 1 + byte % n: given here as the value itself.
ONE_BASED = {"head_dim", "value_dim", "batch", "heads", "padding"}
KERNELS = {"auto": 0, "reference": 1, "blocked": 2, "simd": 3}
# special_value() kinds in values.hpp; poke targets are each scenario's list of operands.
SPECIALS = {"nan": 0, "inf": 1, "-inf": 2, "big": 3, "huge": 5, "denormal": 7, "zero": 9}
TARGETS = {"2d": ["q", "k", "v", "bias"], "batched": ["q", "k", "v", "bias", "batch_bias"],
           "merge": ["q", "k", "v", "bias"], "layer": ["x", "memory"], "backward": ["q", "k", "v", "bias"]}


def seed(scenario, value_seed=1, pokes=(), invalid=None, kernel="auto", double=False, **fields):
    header = [0] * len(FIELDS)
    header[FIELDS.index("scenario")] = SCENARIOS[scenario]
    header[FIELDS.index("element_type")] = 1 if double else 0
    header[FIELDS.index("kernel")] = KERNELS[kernel]
    if invalid:
        header[FIELDS.index("invalid")] = MUTATIONS[scenario].index(invalid)
    for name, value in fields.items():
        byte = value - 1 if name in ONE_BASED else value
        assert 0 <= byte < 256, (name, value)
        header[FIELDS.index(name)] = byte
    data = bytes(header) + struct.pack(">Q", value_seed)
    for target, index, kind in pokes:
        data += bytes([TARGETS[scenario].index(target)]) + struct.pack(">H", index) + bytes([SPECIALS[kind]])
    return data


SEEDS = {
    # ---- 2-D: shapes, masks, layouts, values, mutations
    "2d-plain": seed("2d", queries=5, keys=7, head_dim=8, value_dim=4),
    "2d-causal-fewer-queries": seed("2d", queries=5, keys=9, head_dim=4, value_dim=3, causal=1),
    "2d-causal-more-queries": seed("2d", queries=9, keys=4, head_dim=4, value_dim=3, causal=1, poison=3),
    "2d-mask-full": seed("2d", queries=6, keys=11, head_dim=5, value_dim=5, mask=1, mask_density=100),
    "2d-mask-row-broadcast": seed("2d", queries=6, keys=11, head_dim=5, value_dim=5, mask=2, mask_density=80, poison=1),
    "2d-mask-column-major": seed("2d", queries=7, keys=8, head_dim=3, value_dim=2, mask=3, mask_density=60),
    "2d-mask-stride-0-and-padded": seed("2d", queries=7, keys=8, head_dim=3, value_dim=2, mask=4, kernel="simd"),
    "2d-bias-float-minus-inf": seed("2d", queries=8, keys=8, head_dim=6, value_dim=6, bias=1, bias_specials=2),
    "2d-bias-double-row-nan": seed("2d", queries=8, keys=8, head_dim=6, value_dim=6, bias=4, bias_specials=3 | 2 << 2),
    "2d-bias-huge-column-major": seed("2d", queries=4, keys=9, head_dim=2, value_dim=3, bias=5, bias_specials=1 | 8 << 2),
    "2d-key-lengths": seed("2d", queries=10, keys=20, head_dim=8, value_dim=8, key_lengths=2, poison=3, kernel="blocked"),
    "2d-nan-inf-values": seed("2d", queries=12, keys=13, head_dim=7, value_dim=5, values=2, special_rate=3),
    "2d-pokes": seed("2d", queries=6, keys=6, head_dim=4, value_dim=4, key_lengths=1, key_lengths_value=4,
                     pokes=[("k", 21, "nan"), ("v", 17, "inf"), ("v", 3, "huge"), ("q", 2, "denormal")]),
    "2d-input-stride-0": seed("2d", queries=5, keys=6, head_dim=4, value_dim=3, layout_q=2, layout_k=2),
    "2d-input-overlapping-rows": seed("2d", queries=5, keys=6, head_dim=6, value_dim=5, layout_k=3, layout_v=3, padding=2),
    "2d-column-major-padded": seed("2d", queries=9, keys=17, head_dim=9, value_dim=3, layout_q=4, layout_k=1, layout_v=4,
                                   layout_out=1, padding=3),
    "2d-double-tiles": seed("2d", double=True, queries=33, keys=37, head_dim=16, value_dim=11, query_rows=3, key_rows=5,
                            threads=3, causal=1, kernel="blocked"),
    "2d-one-key-tiles": seed("2d", queries=40, keys=40, head_dim=20, value_dim=20, query_rows=1, key_rows=1, api=1),
    "2d-scale-tiny-and-huge": seed("2d", queries=4, keys=5, head_dim=3, value_dim=2, scale=3, scale_value=3),
    "2d-invalid-out-stride-0": seed("2d", queries=4, keys=5, head_dim=3, value_dim=2, invalid="out_stride_zero"),
    "2d-invalid-out-overlaps-q": seed("2d", queries=4, keys=5, head_dim=3, value_dim=4, invalid="out_overlaps_q"),
    "2d-invalid-scale-1e300": seed("2d", queries=3, keys=3, head_dim=2, value_dim=2, invalid="scale_1e300"),
    "2d-invalid-mask-rows": seed("2d", queries=3, keys=4, head_dim=2, value_dim=2, mask=1, invalid="mask_rows"),
    "2d-invalid-lse-overlaps-out": seed("2d", queries=3, keys=4, head_dim=2, value_dim=2, invalid="lse_overlaps_out"),
    # ---- batched TensorViews
    "batched-bhnd-gqa": seed("batched", batch=2, heads=4, kv_heads=1, queries=21, keys=29, head_dim=8, value_dim=8),
    "batched-bnhd-causal-lengths": seed("batched", batch=3, heads=2, queries=9, keys=14, head_dim=5, value_dim=6,
                                        layout_q=1, layout_k=1, layout_v=1, layout_out=1, causal=1, sequence_lengths=1,
                                        poison=3),
    "batched-fused": seed("batched", batch=2, heads=3, queries=12, keys=12, head_dim=4, value_dim=4, layout_q=7),
    "batched-broadcast-masks": seed("batched", batch=3, heads=4, kv_heads=1, queries=6, keys=10, head_dim=3, value_dim=3,
                                    batch_mask=1 | 2 | 8, batch_bias=1 | 4 | 16, bias_specials=2, mask_density=70),
    "batched-broadcast-layouts": seed("batched", batch=2, heads=2, queries=5, keys=7, head_dim=4, value_dim=4,
                                      layout_q=3, layout_k=4, layout_v=6, layout_out=2, kernel="simd"),
    "batched-overlapping-tokens": seed("batched", batch=1, heads=2, queries=8, keys=8, head_dim=6, value_dim=6,
                                       layout_k=5, layout_v=5, padding=3, values=2, special_rate=2),
    "batched-decode": seed("batched", batch=1, heads=4, kv_heads=0, queries=1, keys=40, head_dim=16, value_dim=16,
                           threads=2, kernel="simd"),
    "batched-invalid-out-head-stride-0": seed("batched", batch=1, heads=2, queries=3, keys=3, head_dim=2, value_dim=2,
                                              invalid="out_head_stride_zero"),
    "batched-invalid-mask-and-batch-mask": seed("batched", batch=2, heads=1, queries=3, keys=3, head_dim=2, value_dim=2,
                                                invalid="mask_and_batch_mask"),
    # ---- LSE, merge, weights
    "merge-plain": seed("merge", queries=7, keys=20, head_dim=8, value_dim=5, split=9, rows=3),
    "merge-masks-nan": seed("merge", queries=9, keys=15, head_dim=4, value_dim=4, split=5, causal=1, mask=2, bias=3,
                            bias_specials=2, values=2, special_rate=3, rows=50),
    "merge-empty-part": seed("merge", queries=6, keys=10, head_dim=3, value_dim=3, split=4, key_lengths=1,
                             key_lengths_value=4, pokes=[("k", 20, "nan")]),
    "merge-invalid-out-b": seed("merge", queries=4, keys=6, head_dim=2, value_dim=2, split=3, invalid="out_b_rows"),
    # ---- KV cache and layer
    "layer-prompt-and-steps": seed("layer", heads=4, kv_heads=1, layer=3 | 3 << 3, batch=2, keys=20, split=6, rows=4),
    "layer-cross": seed("layer", heads=2, layer=4 | 2 | 5 << 3, batch=1, keys=12, split=3, rows=2, value_dim=7),
    "layer-specials": seed("layer", heads=1, layer=7 << 3, batch=1, keys=9, split=2, rows=3, values=2, special_rate=3),
    "layer-invalid-step-capacity": seed("layer", heads=2, layer=1 << 3, batch=2, keys=5, split=3,
                                        invalid="step_exceeds_capacity"),
    "layer-invalid-cache-head": seed("layer", heads=2, layer=1 << 3, batch=1, keys=5, split=2, invalid="keys_head_out_of_range"),
    # ---- backward
    "backward-plain": seed("backward", queries=7, keys=9, head_dim=8, value_dim=5),
    "backward-causal-poison": seed("backward", queries=9, keys=5, head_dim=4, value_dim=3, causal=1, poison=3),
    "backward-bias-dbias": seed("backward", queries=8, keys=11, head_dim=6, value_dim=6, bias=1, bias_specials=2, api=1,
                                kernel="simd"),
    "backward-double-bias-dbias": seed("backward", queries=6, keys=10, head_dim=5, value_dim=4, bias=4, api=1),
    "backward-mask-lengths-double": seed("backward", double=True, queries=12, keys=20, head_dim=8, value_dim=8, mask=1,
                                         mask_density=70, key_lengths=2, query_rows=3, key_rows=5, poison=1),
    "backward-tiles-simd": seed("backward", queries=40, keys=40, head_dim=20, value_dim=20, query_rows=4, key_rows=7,
                                causal=1, kernel="simd"),
    "backward-specials": seed("backward", queries=6, keys=8, head_dim=4, value_dim=4, values=2, special_rate=3),
    "backward-column-major": seed("backward", queries=9, keys=13, head_dim=7, value_dim=3, layout_q=2, padding=2,
                                  kernel="blocked"),
    "backward-invalid-dv-overlaps-dk": seed("backward", queries=4, keys=5, head_dim=3, value_dim=2,
                                            invalid="dv_overlaps_dk"),
    "backward-invalid-dbias-without-bias": seed("backward", queries=3, keys=4, head_dim=2, value_dim=2,
                                                invalid="dbias_without_bias"),
    "backward-invalid-lse-size": seed("backward", queries=5, keys=4, head_dim=2, value_dim=3, invalid="lse_size"),
}


def main():
    out = HERE / "corpus"
    out.mkdir(exist_ok=True)
    for old in out.iterdir():
        if not old.name.startswith(("finding-", "regression-")):  # inputs the fuzzer found, kept as seeds
            old.unlink()
    for name, data in SEEDS.items():
        (out / name).write_bytes(data)
    print(f"wrote {len(SEEDS)} seeds of {len(FIELDS)} header fields to {out}")


if __name__ == "__main__":
    main()
