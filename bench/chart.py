"""Draws bench/results/<date>.png from <date>.json: throughput and peak memory per tool, one bar
per box that ran (unconstrained, Lambda 128 MB, 256 MB, 3,538 MB), one panel pair per case and
mode.

    python bench/chart.py RESULTS.json OUT.png
"""

import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

# The boxes in the report's order: the JSON's `box` value, the legend, the colour.
BOXES = [
    ("unconstrained", "unconstrained", "#4c72b0"),
    ("lambda128", "Lambda 128 MB", "#c44e52"),
    ("lambda256", "Lambda 256 MB", "#dd8452"),
    ("lambda3538", "Lambda 3,538 MB", "#55a868"),
]


def main():
    src, out = sys.argv[1], sys.argv[2]
    with open(src) as f:
        report = json.load(f)
    medians = [m for m in report["medians"] if m["config"]["case"] != "limit"]
    groups = []
    for m in medians:
        g = (m["config"]["case"], m["config"]["mode"])
        if g not in groups:
            groups.append(g)
    if not groups:
        print("chart: no ingest or records case in this run; no chart")
        return
    ran = {m["box"] for m in medians}
    boxes = [b for b in BOXES if b[0] in ran]
    fig, axes = plt.subplots(
        2, len(groups), figsize=(max(6, (2 + 0.6 * len(boxes)) * len(groups)), 7.5), squeeze=False
    )
    for col, (case, mode) in enumerate(groups):
        tools = []
        for m in medians:
            if (m["config"]["case"], m["config"]["mode"]) == (case, mode):
                if m["config"]["tool"] not in tools:
                    tools.append(m["config"]["tool"])
        for row, (field, scale, title) in enumerate(
            [("mib_per_s", 1, "MiB/s (higher is better)"),
             ("peak_bytes", 1 / 1048576, "peak MiB (lower is better)")]
        ):
            ax = axes[row][col]
            width = 0.8 / len(boxes)
            for i, (box, label, color) in enumerate(boxes):
                values, notes = [], []
                for tool in tools:
                    m = next(
                        (x for x in medians if x["config"]["tool"] == tool
                         and (x["config"]["case"], x["config"]["mode"]) == (case, mode)
                         and x["box"] == box),
                        None,
                    )
                    v = m.get(field) if m else None
                    ok = m is not None and m["ok"] > 0
                    values.append((v or 0) * scale if ok or field == "peak_bytes" else 0)
                    notes.append("" if ok else (m["outcome"].split(",")[0].rsplit(" ", 1)[0] if m else "n/a"))
                xs = [t + (i - (len(boxes) - 1) / 2) * width for t in range(len(tools))]
                bars = ax.bar(xs, values, width, label=label, color=color)
                for bar, note in zip(bars, notes):
                    if note:
                        ax.annotate(note, (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                                    ha="center", va="bottom", fontsize=7, rotation=90)
            ax.set_xticks(range(len(tools)))
            ax.set_xticklabels(tools, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{case} {mode}\n{title}" if row == 0 else title, fontsize=9)
            ax.tick_params(axis="y", labelsize=8)
    axes[0][0].legend(fontsize=8)
    gib = report["settings"]["size"] / 2**30
    fig.suptitle(
        f"sluice vs peers, {gib:.2f} GiB source, median of {report['settings']['runs']} run(s); "
        f"{report['date'][:10]}, {report['machine']['cpu']}, {report['machine']['cores']} cores",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"chart: {out}")


if __name__ == "__main__":
    main()
