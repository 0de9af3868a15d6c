#!/usr/bin/env python3
"""Plot bench_attention results: GFLOP/s against N, one line per path, as an SVG.

Python 3 standard library only.

Usage:
    bench_attention --benchmark_out=results.json --benchmark_out_format=json
    python3 benchmarks/plot.py results.json -o docs/benchmark.svg
    python3 benchmarks/plot.py results.json -o docs/benchmark_d128.svg --d 128
    python3 benchmarks/plot.py results.json -o docs/benchmark_causal.svg --causal 1
    python3 benchmarks/plot.py results.json -o docs/benchmark_threads.svg --threads 1,2   # 2 panels

Options:
    --d D            head dimension to plot (default 64)
    --causal C       0 or 1 (default 0); the eigen_* baselines exist for causal 0 only
    --threads T      a thread count, or a comma-separated list for one panel each (default 1)
    --title TEXT     replaces the default title

Each panel draws, for the chosen d, causal and thread count, the GFLOP/s counter of
attention/{simd,blocked,reference,eigen_careful,eigen_typical} and of sgemm (Eigen, same
FLOPs and shape, non-causal) against N on a log2 axis, and the FMA peak of the same thread
count (fma_peak/ISA/threads:T, of the ISA sdpa ran) as a dashed horizontal line. All panels share the y axis. When the
file holds repetitions, the median aggregate is plotted (or the median of the repetitions).
"""

import argparse
import json
import math
import statistics
import sys
from xml.sax.saxutils import escape

# path name in the benchmark -> (legend label, colour, dash pattern or None)
SERIES = [
    ("simd", "sdpa Simd", "#d62728", None),
    ("simd_dispatch", "sdpa Simd, dispatch build", "#e377c2", "2,2"),
    ("blocked", "sdpa Blocked (scalar)", "#ff7f0e", None),
    ("reference", "sdpa Reference", "#8c564b", None),
    ("eigen_careful", "Eigen unfused, careful", "#1f77b4", None),
    ("eigen_typical", "Eigen unfused, typical", "#17becf", None),
    ("sgemm", "Eigen sgemm, same FLOPs", "#2ca02c", "6,3"),
]
SGEMM_LABEL = SERIES[-1][1]
PEAK_COLOUR = "#555555"

FONT = "font-family='DejaVu Sans, Helvetica, Arial, sans-serif'"


def parse_name(name):
    """'attention/simd/N:512/d:64/causal:0/threads:1/real_time' -> ('simd', {'N': 512, ...})."""
    family, params = [], {}
    for part in name.split("/"):
        if ":" in part:
            key, _, value = part.partition(":")
            try:
                params[key] = int(value)
            except ValueError:
                params[key] = value
        elif part not in ("real_time", "manual_time", "process_time"):
            family.append(part)
    if family and family[0] == "attention" and len(family) > 1:
        return family[1], params
    return "/".join(family), params


def load(path):
    """Returns (context, {(path, N, d, causal, threads): GFLOP/s}, {threads: peak GFLOP/s})."""
    with open(path) as f:
        data = json.load(f)
    runs, medians = {}, {}
    for bench in data.get("benchmarks", []):
        if bench.get("error_occurred") or "GFLOPS" not in bench:
            continue
        name = bench.get("run_name", bench["name"])
        gflops = float(bench["GFLOPS"]) / 1e9
        if bench.get("run_type") == "aggregate":
            if bench.get("aggregate_name") == "median":
                medians[name] = gflops
        else:
            runs.setdefault(name, []).append(gflops)
    values = {name: statistics.median(v) for name, v in runs.items()}
    values.update(medians)

    points, peaks = {}, {}
    for name, gflops in values.items():
        kind, p = parse_name(name)
        if kind.startswith("fma_peak"):  # fma_peak/ISA/threads:T: the peak of the ISA that ran
            isa = kind.partition("/")[2]
            if not isa or isa == data.get("context", {}).get("sdpa_isa", isa):
                peaks[p.get("threads", 1)] = gflops
        elif "N" in p and "d" in p:
            points[(kind, p["N"], p["d"], p.get("causal"), p.get("threads", 1))] = gflops
    return data.get("context", {}), points, peaks


def nice_step(span, target_ticks=6):
    raw = span / max(target_ticks, 1)
    magnitude = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 2.5, 5, 10):
        if raw <= m * magnitude:
            return m * magnitude
    return 10 * magnitude


def fmt(value):
    return f"{value:.0f}" if value >= 10 or value == 0 else f"{value:.1f}"


def series_for(points, kind, d, causal, threads):
    """[(N, GFLOP/s)] sorted by N; sgemm has no causal parameter and is drawn on every panel."""
    out = []
    for (k, n, dd, c, t), g in points.items():
        if k == kind and dd == d and t == threads and (kind == "sgemm" or c == causal):
            out.append((n, g))
    return sorted(out)


def panel_svg(x0, y0, width, height, x_range, y_max, lines, peak, threads, subtitle):
    """One chart in the box (x0, y0, width, height); returns SVG elements."""
    left, right, top, bottom = 70, 20, 40, 55
    pw, ph = width - left - right, height - top - bottom
    px0, py0 = x0 + left, y0 + top
    lo, hi = x_range
    log_lo, log_hi = math.log2(lo), math.log2(hi)
    if log_hi == log_lo:
        log_lo, log_hi = log_lo - 1, log_hi + 1

    def sx(n):
        return px0 + (math.log2(n) - log_lo) / (log_hi - log_lo) * pw

    def sy(g):
        return py0 + ph - g / y_max * ph

    el = []
    el.append(f"<text x='{px0 + pw / 2:.1f}' y='{y0 + 22}' text-anchor='middle' font-size='15' "
              f"font-weight='bold' {FONT}>{escape(subtitle)}</text>")
    # grid and y ticks
    step = nice_step(y_max)
    g = 0.0
    while g <= y_max + 1e-9:
        y = sy(g)
        el.append(f"<line x1='{px0}' y1='{y:.1f}' x2='{px0 + pw}' y2='{y:.1f}' stroke='#e5e5e5'/>")
        el.append(f"<text x='{px0 - 8}' y='{y + 4:.1f}' text-anchor='end' font-size='12' {FONT}>{fmt(g)}</text>")
        g += step
    # x ticks at powers of two
    e = math.ceil(log_lo)
    while e <= log_hi + 1e-9:
        n = 2 ** e
        x = sx(n)
        el.append(f"<line x1='{x:.1f}' y1='{py0}' x2='{x:.1f}' y2='{py0 + ph}' stroke='#f0f0f0'/>")
        el.append(f"<line x1='{x:.1f}' y1='{py0 + ph}' x2='{x:.1f}' y2='{py0 + ph + 5}' stroke='black'/>")
        el.append(f"<text x='{x:.1f}' y='{py0 + ph + 19}' text-anchor='middle' font-size='12' {FONT}>{n}</text>")
        e += 1
    # axes
    el.append(f"<rect x='{px0}' y='{py0}' width='{pw}' height='{ph}' fill='none' stroke='black'/>")
    el.append(f"<text x='{px0 + pw / 2:.1f}' y='{y0 + height - 12}' text-anchor='middle' font-size='13' "
              f"{FONT}>N (sequence length, log2 scale)</text>")
    yc = py0 + ph / 2
    el.append(f"<text x='{x0 + 18}' y='{yc:.1f}' text-anchor='middle' font-size='13' {FONT} "
              f"transform='rotate(-90 {x0 + 18} {yc:.1f})'>GFLOP/s</text>")
    # FMA peak
    if peak is not None:
        y = sy(peak)
        el.append(f"<line x1='{px0}' y1='{y:.1f}' x2='{px0 + pw}' y2='{y:.1f}' stroke='{PEAK_COLOUR}' "
                  f"stroke-width='1.5' stroke-dasharray='8,5'/>")
        el.append(f"<text x='{px0 + 6}' y='{y - 6:.1f}' font-size='12' fill='{PEAK_COLOUR}' {FONT}>"
                  f"fp32 FMA peak, {threads} thread{'s' if threads > 1 else ''}: {peak:.0f} GFLOP/s</text>")
    # series; hovering a point shows its value and its ratio to the sgemm of the same N
    sgemm = dict(next((pts for label, _, _, pts in lines if label == SGEMM_LABEL), []))
    for label, colour, dash, pts in lines:
        if not pts:
            continue
        coords = " ".join(f"{sx(n):.1f},{sy(g):.1f}" for n, g in pts)
        dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
        el.append(f"<polyline points='{coords}' fill='none' stroke='{colour}' stroke-width='2.2'{dash_attr}/>")
        for n, g in pts:
            ratio = f", {g / sgemm[n]:.2f}x sgemm" if n in sgemm and label != SGEMM_LABEL else ""
            el.append(f"<circle cx='{sx(n):.1f}' cy='{sy(g):.1f}' r='3.5' fill='{colour}'>"
                      f"<title>{escape(label)}: N={n}, {g:.1f} GFLOP/s{ratio}</title></circle>")
    return el


def legend_svg(x, y, lines, peak_shown):
    el, row = [], 0
    for label, colour, dash, pts in lines:
        if not pts:
            continue
        yy = y + row * 22
        dash_attr = f" stroke-dasharray='{dash}'" if dash else ""
        el.append(f"<line x1='{x}' y1='{yy}' x2='{x + 28}' y2='{yy}' stroke='{colour}' stroke-width='2.5'{dash_attr}/>")
        el.append(f"<circle cx='{x + 14}' cy='{yy}' r='3.5' fill='{colour}'/>")
        el.append(f"<text x='{x + 36}' y='{yy + 4}' font-size='13' {FONT}>{escape(label)}</text>")
        row += 1
    if peak_shown:
        yy = y + row * 22
        el.append(f"<line x1='{x}' y1='{yy}' x2='{x + 28}' y2='{yy}' stroke='{PEAK_COLOUR}' stroke-width='1.5' "
                  f"stroke-dasharray='8,5'/>")
        el.append(f"<text x='{x + 36}' y='{yy + 4}' font-size='13' {FONT}>fp32 FMA peak (same threads)</text>")
    return el


def machine_line(context):
    parts = []
    if "cpu_model" in context:
        parts.append(context["cpu_model"])
    if "num_cpus" in context:
        parts.append(f"{context['num_cpus']} CPUs")
    if "mhz_per_cpu" in context:
        parts.append(f"{context['mhz_per_cpu']} MHz")
    if "sdpa_isa" in context:
        isa = context["sdpa_isa"]
        if "sdpa_vector_floats" in context:
            isa += f" ({context['sdpa_vector_floats']} floats per vector)"
        parts.append(f"sdpa built for {isa}")
    if "host_name" in context:
        parts.append(f"host {context['host_name']}")
    if "date" in context:
        parts.append(context["date"][:16].replace("T", " "))
    return ", ".join(parts)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("json", help="Google Benchmark JSON output of bench_attention")
    parser.add_argument("-o", "--output", default="benchmark.svg", help="SVG file to write (default benchmark.svg)")
    parser.add_argument("--d", type=int, default=64, help="head dimension (default 64)")
    parser.add_argument("--causal", type=int, choices=(0, 1), default=0, help="0 or 1 (default 0)")
    parser.add_argument("--threads", default="1", help="thread count, or a comma-separated list for one panel each")
    parser.add_argument("--title", default=None, help="replaces the default title")
    args = parser.parse_args(argv)
    threads_list = [int(t) for t in args.threads.split(",") if t.strip()]

    context, points, peaks = load(args.json)
    panels = []
    for threads in threads_list:
        lines = [(label, colour, dash, series_for(points, kind, args.d, args.causal, threads))
                 for kind, label, colour, dash in SERIES]
        panels.append((threads, lines, peaks.get(threads)))
    all_pts = [p for _, lines, _ in panels for *_, pts in lines for p in pts]
    if not all_pts:
        sys.exit(f"plot.py: no GFLOPS results for d={args.d} causal={args.causal} threads={args.threads} "
                 f"in {args.json}")
    x_range = (min(n for n, _ in all_pts), max(n for n, _ in all_pts))
    y_top = max([g for _, g in all_pts] + [p for _, _, p in panels if p is not None])
    y_max = math.ceil(y_top * 1.08 / nice_step(y_top * 1.08)) * nice_step(y_top * 1.08)

    panel_w, panel_h, legend_w, header_h = 620, 460, 270, 70
    width = panel_w * len(panels) + legend_w
    height = header_h + panel_h + 10
    heads = context.get("heads_per_iteration", "8")
    title = args.title or (f"Attention throughput: d={args.d}, {'causal' if args.causal else 'non-causal'}, "
                           f"{heads} heads per call")
    el = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
          f"viewBox='0 0 {width} {height}'>",
          f"<rect width='{width}' height='{height}' fill='white'/>",
          f"<text x='{width / 2:.0f}' y='26' text-anchor='middle' font-size='18' font-weight='bold' "
          f"{FONT}>{escape(title)}</text>",
          f"<text x='{width / 2:.0f}' y='48' text-anchor='middle' font-size='12' fill='#444' "
          f"{FONT}>{escape(machine_line(context))}</text>",
          f"<text x='{width / 2:.0f}' y='64' text-anchor='middle' font-size='11' fill='#666' {FONT}>"
          f"{escape('GFLOP/s = 4 N^2 d H / wall time (causal: unmasked pairs only); higher is better')}</text>"]
    for i, (threads, lines, peak) in enumerate(panels):
        subtitle = f"{threads} thread{'s' if threads > 1 else ''}"
        el += panel_svg(i * panel_w, header_h, panel_w, panel_h, x_range, y_max, lines, peak, threads, subtitle)
    shown = []
    for kind, label, colour, dash in SERIES:
        pts = [p for _, lines, _ in panels for l, _, _, ps in lines if l == label for p in ps]
        shown.append((label, colour, dash, pts))
    el += legend_svg(panel_w * len(panels) + 20, header_h + 60, shown,
                     any(p is not None for _, _, p in panels))
    el.append("</svg>")
    with open(args.output, "w") as f:
        f.write("\n".join(el) + "\n")
    print(f"wrote {args.output}: {len(panels)} panel(s), {len(all_pts)} points")


if __name__ == "__main__":
    main()
