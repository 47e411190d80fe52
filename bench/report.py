"""One report of every number we publish: a Markdown table and plots.

    .venv/bin/python bench/report.py [--rerun] [--no-throughput] [--output bench/report]

Writes `OUTPUT/README.md` with:

- retrieval quality: one row per zoo entry (method x bits x protocol x
  direction x mAP), each with the command that reproduces it. By default the
  figures are the manifest's (what `tfhash zoo publish` measured); `--rerun`
  trains every recipe again (about an hour on 2 CPU cores) and reports the
  fresh figures beside the manifest's;
- `map_vs_bits.png`: mAP against code length per method and protocol;
- `pr_fashion_mnist_32.png`: precision-recall within Hamming radius of the
  32-bit image models on the Fashion-MNIST protocol, from the zoo encoders
  (tfhash/zoo/files/, or downloaded: see tfhash/zoo/README.md);
- `bench/figures/bgan_fashion_mnist.png` (`--bgan-figure`), redrawn from
  `bench/bgan.py`'s results (`--bgan-results`, default bench/results/bgan.json)
  when that file exists (`plot_bgan(results, path)` draws it);
- throughput: the side-by-side ratios of `bench/encode.py` and
  `bench/index.py`, run here, with their output as printed.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
THROUGHPUT = [
    ["bench/encode.py", "--seconds", "2"],
    ["bench/index.py", "--n", "200000", "--repeats", "2"],
]
DIRECTION = {"map@all": "image", "map@all image->text": "I->T", "map@all text->image": "T->I"}


def rows_from_manifest(manifest, rerun):
    from tfhash import recipes, training, zoo

    rows, fresh = [], {}
    for name, entry in sorted(manifest["entries"].items()):
        # Recipe paths are relative to the manifest's folder (`tfhash.publish`).
        recipe = recipes.read(zoo.manifest_path().parent / entry["recipe"])
        measured = None
        if rerun:
            if recipe["name"] not in fresh:
                print(f"re-running {recipe['name']}", flush=True)
                fresh[recipe["name"]] = training.train(recipe=recipe, verbose=0).scores
            modality = "text" if name.endswith("_text") else "image"
            measured = fresh[recipe["name"]][modality]["map"]
        rows.append({
            "entry": name, "method": recipe["method"], "protocol": entry["protocol"], "bits": entry["bits"],
            "direction": DIRECTION.get(entry["metric"]["name"], entry["metric"]["name"]),
            "map": entry["metric"]["value"], "measured": measured,
            "command": f"tfhash reproduce {recipe['name']}",
        })
    return rows


def plot_map_vs_bits(rows, path):
    """mAP against bits, a line per method, protocol and direction; returns the `Figure`.

    Lines are drawn from the highest mAP down, so close ones (ugach I->T and
    T->I) are consecutive and differ in width, marker and dash
    (`tfhash.evaluation.line_style`); each legend entry, outside the axes,
    gives the line's mAP at every code length.
    """
    from matplotlib.figure import Figure

    from tfhash.evaluation import describe, line_style, save_figure

    lines = {}
    for row in rows:
        key = (row["method"], row["protocol"], row["direction"])
        lines.setdefault(key, []).append((row["bits"], row["measured"] or row["map"]))
    order = sorted(lines, key=lambda key: (-max(m for _, m in lines[key]), key))
    figure = Figure(figsize=(8.2, 4.4), dpi=120, layout="constrained")
    ax = figure.subplots()
    for i, key in enumerate(order):
        points = sorted(lines[key])
        method, protocol, direction = key
        values = " / ".join(f"{m:.4f}" for _, m in points)
        ax.plot([b for b, _ in points], [m for _, m in points], **line_style(i),
                label=f"{method}, {protocol} {direction}: {values}")
    bits = sorted({row["bits"] for row in rows})
    protocols = {}
    for method, protocol, direction in order:
        protocols.setdefault(protocol, set()).add(direction)
    ax.set_xlabel("bits")
    ax.set_ylabel("mAP@all")
    ax.set_xticks(bits)
    ax.margins(x=0.08)
    ax.grid(alpha=0.3)
    figure.legend(loc="outside right center", fontsize=7, frameon=False,
                  title=f"method, protocol direction: mAP@all at {' / '.join(map(str, bits))} bits", title_fontsize=7)
    source = "re-run" if any(row["measured"] for row in rows) else "zoo manifest"
    ax.set_title(
        f"mAP@all against code length, {describe(bits=bits)} ({source})\n"
        + "; ".join(f"{describe(protocol)}: {', '.join(sorted(d))}" for protocol, d in sorted(protocols.items())),
        fontsize=9,
    )
    save_figure(figure, path)
    return figure


def plot_pr(rows, path):
    from tfhash.data import load_protocol
    from tfhash.evaluation import evaluate_model, plot_precision_recall
    from tfhash.models import HashModel

    data = load_protocol("fashion_mnist")
    curves = {}
    for row in rows:
        if row["protocol"] == "fashion_mnist" and row["bits"] == 32:
            result, _, _ = evaluate_model(HashModel.from_preset(row["entry"]), data)
            curves[row["method"]] = result  # pr_curve, map, bits and protocol: legend and title name them
    plot_precision_recall(curves, path)
    return [f"{method}, mAP {result['map']:.3f}" for method, result in sorted(curves.items())]


def plot_bgan(results, path, protocol="fashion_mnist"):
    """`bench/bgan.py`'s figure: BGAN's mAP@all per epoch for each code length,
    beside the LSH and untrained-encoder baselines (horizontal lines, each
    labelled in the legend and at its right end) and beta (right axis).
    Returns the `Figure`.

    Args:
        results: {bits: {"map", "lsh", "untrained", "per_epoch": [{"epoch", "beta", "map"}]}},
            as `bench/bgan.py` writes them (JSON keys are strings).
        path: output PNG (written atomically).
    """
    from matplotlib.figure import Figure

    from tfhash.evaluation import describe, save_figure

    results = {int(bits): r for bits, r in sorted(results.items(), key=lambda item: int(item[0]))}
    figure = Figure(figsize=(7, 5), dpi=120, layout="constrained")
    ax = figure.subplots()
    beta_axis = ax.twinx()
    ax.set_zorder(beta_axis.get_zorder() + 1)  # the mAP lines over the beta steps
    ax.patch.set_visible(False)
    last_epoch = max(e["epoch"] for r in results.values() for e in r["per_epoch"])
    for i, (bits, r) in enumerate(results.items()):
        color = f"C{i}"
        epochs = [e["epoch"] for e in r["per_epoch"]]
        ax.plot(epochs, [e["map"] for e in r["per_epoch"]], color=color, marker="os"[i % 2], markerfacecolor="none",
                linewidth=2.4 - 1.0 * (i % 2), label=f"BGAN {bits} bits (final {r['map']:.4f})", zorder=3 + i)
        for name, value, dash in (("LSH", r["lsh"], ":"), ("untrained encoder", r.get("untrained"), "-.")):
            if value is None:
                continue
            ax.axhline(value, color=color, linestyle=dash, linewidth=1.3, label=f"{name}, {bits} bits ({value:.4f})")
            ax.annotate(f"{name} {bits}", (last_epoch, value), xytext=(0, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=7, color=color)
    beta_axis.step(epochs, [e["beta"] for e in r["per_epoch"]], where="post", color="black", alpha=0.4,
                   linewidth=1.2, label="beta (right axis)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("mAP@all")
    beta_axis.set_ylabel("beta")
    ax.grid(alpha=0.3)
    handles = ax.get_legend_handles_labels()[0] + beta_axis.get_legend_handles_labels()[0]
    figure.legend(handles=handles, loc="outside lower center", ncols=2, fontsize=7, frameon=False)
    ax.set_title(
        "BGAN: mAP@all per epoch as beta anneals, beside LSH and the untrained encoder\n"
        + describe(protocol, list(results), {f"{bits} bits": r["map"] for bits, r in results.items()}),
        fontsize=9,
    )
    save_figure(figure, path)
    return figure


def throughput():
    sections = []
    for argv in THROUGHPUT:
        print("running", " ".join(argv), flush=True)
        out = subprocess.run([sys.executable, *argv], cwd=ROOT, capture_output=True, text=True, check=True).stdout
        sections.append((" ".join([".venv/bin/python", *argv]), out.strip()))
    return sections


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rerun", action="store_true", help="train every recipe again for fresh figures")
    parser.add_argument("--no-throughput", action="store_true", help="skip bench/encode.py and bench/index.py")
    parser.add_argument("--output", default="bench/report")
    parser.add_argument("--bgan-results", default="bench/results/bgan.json",
                        help="bench/bgan.py's JSON; when it exists, its figure is redrawn")
    parser.add_argument("--bgan-figure", default="bench/figures/bgan_fashion_mnist.png")
    args = parser.parse_args()
    from tfhash import zoo

    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    files = zoo.manifest_path().parent / "files"
    if not os.environ.get(zoo.URL_ENV) and files.is_dir():
        os.environ[zoo.URL_ENV] = files.as_uri() + "/"  # the encoders published on this machine
    manifest = zoo.read_manifest()
    rows = rows_from_manifest(manifest, args.rerun)
    plot_map_vs_bits(rows, output / "map_vs_bits.png")
    pr_models = plot_pr(rows, output / "pr_fashion_mnist_32.png")
    if os.path.exists(args.bgan_results):
        with open(args.bgan_results) as f:
            plot_bgan(json.load(f), args.bgan_figure)
        print(f"wrote {args.bgan_figure} from {args.bgan_results}")

    import tensorflow as tf

    command = " ".join([".venv/bin/python", *sys.argv])
    lines = [
        "# tfhash benchmark report",
        "",
        f"`{command}` on {datetime.date.today()}: {os.cpu_count()} CPUs, Python {platform.python_version()}, "
        f"TensorFlow {tf.__version__}.",
        "",
        "## Retrieval quality",
        "",
        "mAP@all of each zoo entry on the protocol its recipe names (relevant: shares a label; Hamming ranking, "
        "ties by database index). `manifest` is what `tfhash zoo publish` measured"
        + ("; `re-run` what this run measured." if args.rerun else "."),
        "",
        "| method | protocol | bits | direction | mAP (manifest) |" + (" mAP (re-run) |" if args.rerun else "")
        + " reproduce with |",
        "|---|---|---|---|---|" + ("---|" if args.rerun else "") + "---|",
    ]
    for row in rows:
        rerun = f" {row['measured']:.4f} |" if args.rerun else ""
        lines.append(f"| {row['method']} | {row['protocol']} | {row['bits']} | {row['direction']} | {row['map']:.4f} |"
                     f"{rerun} `{row['command']}` |")
    lines += [
        "",
        "![mAP against bits](map_vs_bits.png)",
        "",
        f"Precision-recall within Hamming radius 0..K, 32-bit zoo encoders of {', '.join(pr_models)}:",
        "",
        "![PR curves](pr_fashion_mnist_32.png)",
        "",
    ]
    if not args.no_throughput:
        lines += ["## Throughput", "", "Ratios are taken side by side in one run of each script.", ""]
        for cmd, out in throughput():
            lines += [f"### `{cmd}`", "", "```", out, "```", ""]
    (output / "README.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {output / 'README.md'}")


if __name__ == "__main__":
    main()
