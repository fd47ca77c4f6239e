#!/usr/bin/env python3
"""Plots detection time against the number of servers (log-log): dnlb's measured median and max
next to the paper's sequential probing, (1+n)*u/2. Writes a dependency-free SVG."""
import csv
import math
import sys

rows = list(csv.DictReader(open(sys.argv[1])))
out = sys.argv[2]
W, H, L, R, T, B = 660, 400, 90, 20, 30, 50
ns = [float(r["n"]) for r in rows]
series = {
    "dnlb median": ([float(r["median_ms"]) for r in rows], "#1f77b4", ""),
    "dnlb max": ([float(r["max_ms"]) for r in rows], "#1f77b4", "5,4"),
    "paper, sequential (1+n)u/2": ([float(r["paper_sequential_ms"]) for r in rows], "#d62728", ""),
}
ys = [y for s in series.values() for y in s[0] if y > 0]
x0, x1 = math.log10(min(ns)), math.log10(max(ns)) if max(ns) > min(ns) else math.log10(min(ns)) + 1
y0, y1 = math.floor(math.log10(min(ys))), math.ceil(math.log10(max(ys)))
px = lambda n: L + (math.log10(n) - x0) / (x1 - x0) * (W - L - R)
py = lambda y: H - B - (math.log10(y) - y0) / (y1 - y0) * (H - T - B)
svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">',
       f'<rect width="{W}" height="{H}" fill="white"/>',
       f'<text x="{W/2}" y="18" text-anchor="middle">Time to drop a silent server (interval 1 s, timeout u = 150 ms)</text>']
for e in range(int(y0), int(y1) + 1):
    y = py(10 ** e)
    svg.append(f'<line x1="{L}" y1="{y:.1f}" x2="{W-R}" y2="{y:.1f}" stroke="#ddd"/>')
    svg.append(f'<text x="{L-6}" y="{y+4:.1f}" text-anchor="end">{10**e:g} ms</text>')
for n in ns:
    x = px(n)
    svg.append(f'<line x1="{x:.1f}" y1="{T}" x2="{x:.1f}" y2="{H-B}" stroke="#eee"/>')
    svg.append(f'<text x="{x:.1f}" y="{H-B+16}" text-anchor="middle">{int(n)}</text>')
svg.append(f'<text x="{(L+W-R)/2}" y="{H-12}" text-anchor="middle">servers probed (n)</text>')
for i, (name, (vals, color, dash)) in enumerate(series.items()):
    pts = " ".join(f"{px(n):.1f},{py(v):.1f}" for n, v in zip(ns, vals) if v > 0)
    svg.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
    for n, v in zip(ns, vals):
        if v > 0:
            svg.append(f'<circle cx="{px(n):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
    ly = T + 16 + i * 16
    svg.append(f'<line x1="{L+10}" y1="{ly-4}" x2="{L+40}" y2="{ly-4}" stroke="{color}" stroke-width="2" stroke-dasharray="{dash}"/>')
    svg.append(f'<text x="{L+46}" y="{ly}">{name}</text>')
svg.append("</svg>")
open(out, "w").write("\n".join(svg) + "\n")
