#!/usr/bin/env python3
"""Puts the loss curves of several training runs in one plot, and prints their epochs side by side.

    scripts/compare-runs.py [--minutes] OUT.svg LABEL=RUN_DIR [LABEL=RUN_DIR ...]

Each RUN_DIR is a checkpoint folder of `charrnn train` (its metrics.jsonl is read). The plot has
each run's train loss (thin) and validation loss (thick) per epoch, every other run dashed; with
--minutes each point sits at the minutes of epochs done by its epoch's end instead, so that runs
of different epoch lengths compare by the compute they took. The table, on stdout in Markdown,
has per epoch each run's validation loss and seconds, then each run's best epoch and total
seconds.
"""

import json
import sys
from pathlib import Path

COLOURS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"]


def epochs(run_dir):
    """The run's epoch records, each with "minutes": the minutes of epochs up to its end."""
    rows, done = [], 0.0
    for line in Path(run_dir, "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("kind") == "epoch":
            done += record["seconds"]
            rows.append({**record, "minutes": done / 60})
    return rows


def svg(runs, by="epoch", width=720, height=420, margin=60):
    points = [(r[by], r[key]) for _, rows in runs for r in rows for key in ("train_loss", "val_loss")
              if r.get(key) is not None]
    # Epochs count from 1; minutes from 0.
    x_min = 1 if by == "epoch" else 0
    x_max = max(x for x, _ in points)
    y_min, y_max = min(v for _, v in points), max(v for _, v in points)
    pad = (y_max - y_min) * 0.05 or 0.1
    y_min, y_max = y_min - pad, y_max + pad

    def at(x_value, value):
        x = margin + (x_value - x_min) / max(x_max - x_min, 1) * (width - 2 * margin)
        y = height - margin - (value - y_min) / (y_max - y_min) * (height - 2 * margin)
        return f"{x:.1f},{y:.1f}"

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
             f'font-family="sans-serif" font-size="12">',
             f'<rect width="{width}" height="{height}" fill="white"/>',
             f'<line x1="{margin}" y1="{height - margin}" x2="{width - margin}" y2="{height - margin}" stroke="black"/>',
             f'<line x1="{margin}" y1="{margin}" x2="{margin}" y2="{height - margin}" stroke="black"/>',
             f'<text x="{width / 2}" y="{height - 20}" text-anchor="middle">'
             f'{"epoch" if by == "epoch" else "minutes of epochs"}</text>',
             f'<text x="15" y="{height / 2}" transform="rotate(-90 15 {height / 2})" '
             f'text-anchor="middle">loss (nats/char)</text>']
    # Every epoch labelled, or a minute mark about every 50 pixels at a round step.
    marks = (width - 2 * margin) / 50
    step = 1 if by == "epoch" else next((s for s in (1, 2, 5, 10, 15, 20, 30, 60, 120) if x_max / s <= marks), 240)
    for tick in range(x_min, int(x_max) + 1, step):
        x = at(tick, y_min).split(",")[0]
        parts.append(f'<text x="{x}" y="{height - margin + 16}" text-anchor="middle">{tick}</text>')
    for i in range(6):
        value = y_min + (y_max - y_min) * i / 5
        y = at(1, value).split(",")[1]
        parts.append(f'<text x="{margin - 6}" y="{y}" text-anchor="end" dominant-baseline="middle">{value:.2f}</text>')
        parts.append(f'<line x1="{margin}" y1="{y}" x2="{width - margin}" y2="{y}" stroke="#eee"/>')
    for n, (label, rows) in enumerate(runs):
        colour = COLOURS[n % len(COLOURS)]
        # Every other run dashed, so that curves lying on each other both show.
        dash = ' stroke-dasharray="7 5"' if n % 2 else ""
        for key, stroke, name in (("train_loss", 1, "train"), ("val_loss", 2.5, "validation")):
            line = " ".join(at(r[by], r[key]) for r in rows if r.get(key) is not None)
            parts.append(f'<polyline fill="none" stroke="{colour}" stroke-width="{stroke}"{dash} points="{line}"/>')
            y = margin + 16 * (2 * n + (key == "val_loss"))
            parts.append(f'<line x1="{width - margin - 170}" y1="{y}" x2="{width - margin - 145}" y2="{y}" '
                         f'stroke="{colour}" stroke-width="{stroke}"{dash}/>')
            parts.append(f'<text x="{width - margin - 140}" y="{y}" dominant-baseline="middle">{label} {name}</text>')
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def table(runs):
    labels = [label for label, _ in runs]
    lines = ["| epoch | " + " | ".join(f"{l}: validation | {l}: s" for l in labels) + " |",
             "|---|" + "---|---|" * len(labels)]
    for e in range(1, max(len(rows) for _, rows in runs) + 1):
        cells = []
        for _, rows in runs:
            row = next((r for r in rows if r["epoch"] == e), None)
            cells += [f"{row['val_loss']:.4f}", f"{row['seconds']:.1f}"] if row else ["", ""]
        lines.append(f"| {e} | " + " | ".join(cells) + " |")
    for label, rows in runs:
        best = min(rows, key=lambda r: r["val_loss"])
        total = sum(r["seconds"] for r in rows)
        lines.append(f"\n{label}: best {best['val_loss']:.4f} at epoch {best['epoch']}, {total:.0f} s of epochs")
    return "\n".join(lines)


def main():
    args = sys.argv[1:]
    by = "minutes" if args[:1] == ["--minutes"] else "epoch"
    args = args[1:] if by == "minutes" else args
    if len(args) < 2 or any("=" not in a for a in args[1:]):
        sys.exit(__doc__)
    runs = [(a.split("=", 1)[0], epochs(a.split("=", 1)[1])) for a in args[1:]]
    Path(args[0]).write_text(svg(runs, by))
    print(table(runs))


if __name__ == "__main__":
    main()
