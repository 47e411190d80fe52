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
- throughput: the side-by-side ratios of `bench/encode.py` and
  `bench/index.py`, run here, with their output as printed.
"""

import argparse
import datetime
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
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    lines = {}
    for row in rows:
        key = f"{row['method']} ({row['protocol']}, {row['direction']})"
        lines.setdefault(key, []).append((row["bits"], row["measured"] or row["map"]))
    for key, points in sorted(lines.items()):
        points.sort()
        ax.plot([b for b, _ in points], [m for _, m in points], marker="o", label=key)
    ax.set_xlabel("bits")
    ax.set_ylabel("mAP@all")
    ax.set_xticks(sorted({row["bits"] for row in rows}))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax.set_title("mAP against code length (zoo entries)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def plot_pr(rows, path):
    from tfhash.data import load_protocol
    from tfhash.evaluation import evaluate_model, plot_precision_recall
    from tfhash.models import HashModel

    data = load_protocol("fashion_mnist")
    curves = {}
    for row in rows:
        if row["protocol"] == "fashion_mnist" and row["bits"] == 32:
            result, _, _ = evaluate_model(HashModel.from_preset(row["entry"]), data)
            curves[f"{row['method']}, mAP {result['map']:.3f}"] = result["pr_curve"]
    plot_precision_recall(curves, path, title="Fashion-MNIST protocol, 32 bits")
    return sorted(curves)


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
