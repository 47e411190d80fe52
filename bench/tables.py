"""The benchmark tables of README.md and docs/methods/*.md, generated from bench/results/*.jsonl,
and README.md's methods table, from the registry.

    .venv/bin/python bench/tables.py            # rewrites the blocks between the markers
    .venv/bin/python bench/tables.py --check    # exit 1 (naming the files) where a block is stale

`bench/methods.py` appends one JSON record per trained run to
`bench/results/METHOD_PROTOCOL.jsonl` (committed). This script rewrites what
lies between `<!-- methods-table -->` and `<!-- /methods-table -->`: in
README.md a summary (`summary`: each method's mAP@all per protocol, trunk and
code length, one figure per cell, then P@100, P@r2 and train seconds at 32
bits), in docs/methods/M.md every record of method M; and in README.md
between `<!-- zoo-table -->` and `<!-- /zoo-table -->`, the zoo manifest's
mAP@all of every entry (`zoo_block`). Where
several records share method, protocol, bits, seed, data options, recipe and
overrides, the last one written stands. "x DHN" divides by the DHN record of the same
protocol, bits and seed trained with its recipe (or, without one, its
defaults) and no other change. tests/test_benchmarks.py regenerates the
blocks and compares them with the committed files; nothing is trained.

Imports no TensorFlow (no tfhash at all): `bench/methods.py` and the test use
its functions.
"""

import argparse
import json
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
README = REPO / "README.md"
PAGES = REPO / "docs" / "methods"
BEGIN, END = "<!-- methods-table -->", "<!-- /methods-table -->"

# Score keys of a record: one per retrieval direction the protocol has.
DIRECTIONS = {"image_to_image": "", "image_to_text": "I->T", "text_to_image": "T->I"}
BASELINES = {"lsh": "LSH", "itq": "ITQ", "cca_itq": "CCA-ITQ"}
REQUIRED = ("method", "protocol", "bits", "seed", "recipe", "overrides", "settings", "data", "scores",
            "train_seconds", "untrained", "baselines", "versions", "command", "date")


def results_path(method, protocol, results_dir=RESULTS):
    """The file a (method, protocol)'s records are appended to."""
    return Path(results_dir) / f"{method}_{protocol}.jsonl"


def read_records(results_dir=RESULTS):
    """Every record of every `*.jsonl` under `results_dir`, file by file (sorted), in written order."""
    records = []
    for path in sorted(Path(results_dir).glob("*.jsonl")):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = [key for key in REQUIRED if key not in record]
            if missing:
                raise ValueError(f"{path}:{number}: a record needs the keys {list(REQUIRED)}; missing {missing}")
            records.append(record)
    return records


def key(record):
    """What makes two runs the same run (`bench/methods.py --reuse`)."""
    return (record["method"], record["protocol"], record["bits"], record["seed"],
            json.dumps(record["data"], sort_keys=True), json.dumps(record["settings"], sort_keys=True))


def shown_key(record):
    """What a table row stands for: `key` with the settings as named (recipe and overrides), so that a
    rerun after a method gained a setting replaces its row instead of adding one."""
    return (record["method"], record["protocol"], record["bits"], record["seed"], record["recipe"],
            json.dumps(record["overrides"], sort_keys=True), json.dumps(record["data"], sort_keys=True))


def latest(records, by=shown_key):
    """One record per `by(record)`: the last written."""
    out = {}
    for record in records:
        out.pop(by(record), None)
        out[by(record)] = record
    return list(out.values())


def is_reference(record):
    """A DHN record trained with its recipe (or its defaults where none is published), nothing changed."""
    return record["method"] == "dhn" and not record["overrides"]


def reference(records, protocol, bits, seed):
    """The DHN record the ratios of (protocol, bits, seed) divide by, or None."""
    found = [r for r in records if is_reference(r) and (r["protocol"], r["bits"], r["seed"]) == (protocol, bits, seed)]
    # A recipe's run over a defaults run (both exist only if a recipe was published after).
    found.sort(key=lambda r: r["recipe"] is not None)
    return found[-1] if found else None


def settings_label(record):
    """"recipe `NAME`" or "defaults", then the changed settings, e.g. "defaults, epochs=5"."""
    label = f"recipe `{record['recipe']}`" if record["recipe"] else "defaults"
    if record.get("trunk") and not record["recipe"]:  # bench/methods.py --trunk: DHN's variant's trunk
        label += f", the trunk of `dhn_{record['protocol']}_{record['trunk']}_{record['bits']}`"
    changed = ", ".join(f"{k}={json.dumps(v)}" for k, v in sorted(record["overrides"].items()))
    return f"{label}, {changed}" if changed else label


def _num(value, digits=4):
    return "–" if value is None else f"{value:.{digits}f}"


def rows(records, methods=None):
    """Table rows (dicts of cells) of the latest records, sorted; `methods` keeps only those."""
    records = latest(records)
    chosen = [r for r in records if methods is None or r["method"] in methods]
    chosen.sort(key=lambda r: (r["protocol"], r["method"] != "dhn", r["method"], r["bits"], r["seed"],
                               settings_label(r)))
    out = []
    for record in chosen:
        ref = reference(records, record["protocol"], record["bits"], record["seed"])
        for direction, figures in record["scores"].items():
            base = [f"{BASELINES.get(name, name)} {_num(b[direction]['map'])}"
                    for name, b in record["baselines"].items() if direction in b]
            ref_map = ref["scores"].get(direction, {}).get("map") if ref else None
            out.append({
                "method": f"{record['method']} {DIRECTIONS.get(direction, direction)}".strip(),
                "protocol": f"`{record['protocol']}`",
                "bits": str(record["bits"]),
                "seed": str(record["seed"]),
                "settings": settings_label(record),
                "mAP@all": f"**{_num(figures['map'])}**",
                "x DHN": f"{figures['map'] / ref_map:.2f}" if ref_map else "–",
                "P@100": _num(figures["precision@100"]),
                "P@r2": _num(figures["precision@r2"]),
                "untrained": _num(record["untrained"].get(direction, {}).get("map")),
                "baselines": ", ".join(base) or "–",
                "train s": f"{record['train_seconds']:.0f}",
                "date": record["date"],
            })
    return out


COLUMNS = ("method", "protocol", "bits", "seed", "settings", "mAP@all", "x DHN", "P@100", "P@r2", "untrained",
           "baselines", "train s", "date")


def markdown(table_rows, columns=COLUMNS):
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(row[c] for c in columns) + " |" for row in table_rows]
    return "\n".join(lines)


LEGEND = ("mAP@all, P@100 and P@r2 (precision within Hamming radius 2) over the protocol's queries, each "
          "model scored once after training (nothing selected on the queries); x DHN: mAP over DHN's at the "
          "same protocol, bits and seed with its recipe (else its defaults); untrained: the method's encoder "
          "before training; baselines on the pixels (LSH, ITQ) or on pixels and bags of words (CCA-ITQ), fitted on the "
          "training set; train s: `fit`'s seconds on the machine of the record ({cpus}).")


PROTOCOL_NAMES = {"fashion_mnist": "Fashion-MNIST", "open_clip_art_images": "Open Clip Art images",
                  "open_clip_art": "Open Clip Art", "digits": "digits"}


def column_of(record):
    """The summary's column a record belongs to: (protocol, its trunk variant, bits)."""
    return record["protocol"], record.get("trunk") or "", record["bits"]


def column_label(column, records):
    protocol, trunk, bits = column
    label = f"{PROTOCOL_NAMES.get(protocol, protocol)}, {bits} bits"
    if trunk:
        settings = next(r["settings"] for r in records if column_of(r) == column)
        label += f", {'frozen ' if settings.get('freeze_backbone') else ''}{settings.get('backbone')}"
    return label


def summary_cells(records):
    """{method: {column: record}} of the runs the summary shows: seed 0, the published recipe or the
    defaults (with `--trunk`'s shared trunk), nothing else changed, in columns two methods or more share;
    and the columns, sorted."""
    cells = {}
    for record in latest(records):
        if record["seed"] == 0 and not record["overrides"] and len(record["scores"]) == 1:
            cells.setdefault(record["method"], {})[column_of(record)] = record
    counts = {}
    for by_column in cells.values():
        for column in by_column:
            counts[column] = counts.get(column, 0) + 1
    columns = sorted((c for c, n in counts.items() if n >= 2), key=lambda c: (c[1] != "", c[0], c[2]))
    return {m: {c: r for c, r in by.items() if c in columns} for m, by in cells.items()}, columns


def summary(records, titles=None):
    """README.md's tables: mAP@all of every method (rows) in every shared column (protocol, trunk,
    bits), the untrained encoder and the pixel baselines under them; then P@100, P@r2 and the
    training seconds in the 32-bit columns. One figure per cell."""
    titles = titles or {}
    cells, columns = summary_cells(records)
    methods = sorted((m for m in cells if cells[m]), key=lambda m: (m != "dhn", m))
    if not columns:
        return ""

    def title(method):
        return f"[{titles.get(method, method)}](docs/methods/{method}.md)"

    def bar(column):  # the baselines' and the untrained encoder's record: DHN's where there is one
        found = [cells[m][column] for m in ("dhn", *methods) if column in cells.get(m, {})]
        return found[0] if found else None

    head = ["method", *(column_label(c, records) for c in columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        row = [_num(cells[method][c]["scores"]["image_to_image"]["map"]) if c in cells[method] else "–"
               for c in columns]
        lines.append(f"| {title(method)} | " + " | ".join(row) + " |")
    lines.append(f"| untrained encoder (DHN's, same seed) | " + " | ".join(
        _num(bar(c)["untrained"]["image_to_image"]["map"]) for c in columns) + " |")
    for name in ("lsh", "itq"):
        found = [bar(c)["baselines"].get(name, {}).get("image_to_image", {}).get("map") for c in columns]
        if any(f is not None for f in found):
            lines.append(f"| {BASELINES[name]} (pixels) | " + " | ".join(map(_num, found)) + " |")
    detail = [c for c in columns if c[2] == 32]
    head = ["method"]
    for c in detail:
        short = column_label(c, records).replace(", 32 bits", "")
        head += [f"{short}: P@100", "P@r2", "train s"]
    more = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for method in methods:
        row = []
        for c in detail:
            r = cells[method].get(c)
            figures = r["scores"]["image_to_image"] if r else None
            row += ([_num(figures["precision@100"]), _num(figures["precision@r2"]), f"{r['train_seconds']:.0f}"]
                    if r else ["–"] * 3)
        more.append(f"| {title(method)} | " + " | ".join(row) + " |")
    return "\n".join(lines), "\n".join(more)


def block(records, methods=None, command_hint=None, results_link="bench/results"):
    """The text between the markers: the table, or a line saying how to make one."""
    table_rows = rows(records, methods)
    if not table_rows:
        return _wrap(f"No record yet. `{command_hint}` trains, scores and appends one to `bench/results/`."
                     if command_hint else "No record yet.")
    chosen = [r for r in latest(records) if methods is None or r["method"] in methods]
    cpus = sorted({r.get("cpus") for r in chosen if r.get("cpus")})
    cpus = " / ".join(f"{c} CPU cores" for c in cpus) or "see the record"
    files = sorted({f"{r['method']}_{r['protocol']}.jsonl" for r in chosen})
    source = ", ".join(f"[`{f}`]({results_link}/{f})" for f in files)
    return "\n\n".join([
        _wrap(f"Generated by `bench/tables.py` from {source} (`bench/methods.py` writes them); "
              "the last record of each run stands."),
        markdown(table_rows),
        _wrap(LEGEND.format(cpus=cpus)),
    ])


SUMMARY_LEGEND = (
    "Each model trained once (seed 0) and scored once after training on the protocol's queries: nothing "
    "selected on them. Fashion-MNIST from scratch with each method's published recipe "
    "(`tfhash/zoo/recipes/`, whose `why` says what it changes from the paper: DHN's alpha and balance, "
    "the others nothing) on one schedule: the recipes' CNN, 30 epochs, batch 128, Adam 1e-3; at 16 bits "
    "the 32-bit recipe's settings. Open Clip Art images with each method's defaults on DHN's frozen "
    "ImageNet trunk and "
    "loader (`dhn_open_clip_art_images_lite0_32`, `bench/methods.py --trunk lite0`). Untrained: DHN's "
    "encoder before training; LSH and ITQ on the pixels, fitted on the training set. P@r2: precision "
    "within Hamming radius 2; train s: `fit`'s seconds on {cpus}. Every record, with its baselines, "
    "command and settings, is on the method's page.")


def readme_block(records, titles):
    """README.md's block: `summary`'s two tables and their legend."""
    tables = summary(records, titles)
    if not tables:
        return "No record yet."
    cpus = sorted({r.get("cpus") for r in latest(records) if r.get("cpus")})
    cpus = " / ".join(f"{c} CPU cores" for c in cpus) or "the record's machine"
    return "\n\n".join([
        _wrap("Generated by `bench/tables.py` from [`bench/results/`](bench/results) (`bench/methods.py` "
              "writes the records). mAP@all:"),
        tables[0],
        "At 32 bits, P@100, P@r2 and the training time:",
        tables[1],
        _wrap(SUMMARY_LEGEND.format(cpus=cpus)),
    ])


ZOO_BEGIN, ZOO_END = "<!-- zoo-table -->", "<!-- /zoo-table -->"


def zoo_rows(manifest, recipes):
    """{(method, protocol, trunk, direction): {bits: mAP}} of a zoo manifest's entries; `recipes`
    maps an entry's recipe path to that recipe (its method, protocol, bits and settings)."""
    rows = {}
    for entry in manifest["entries"].values():
        recipe = recipes[entry["recipe"]]
        method, protocol, bits = recipe["method"], recipe["protocol"], recipe["bits"]
        settings = recipe["settings"]
        trunk = (f"{'frozen ' if settings.get('freeze_backbone') else ''}{settings['backbone']}"
                 if settings.get("backbone") else "from scratch")
        direction = entry["metric"]["name"].removeprefix("map@all").strip() or "image->image"
        rows.setdefault((method, protocol, trunk, direction), {})[bits] = entry["metric"]["value"]
    return rows


def zoo_block(manifest, recipes, titles, kinds):
    """README.md's zoo table: one row per entry family (method, protocol, trunk, direction), the
    manifest's mAP@all at each code length, one figure per cell."""
    rows = zoo_rows(manifest, recipes)
    lengths = sorted({bits for by_bits in rows.values() for bits in by_bits})
    head = ["method", "kind", "protocol", "trunk", "direction", *(f"{b} bits" for b in lengths)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    order = sorted(rows, key=lambda k: (k[0] != "dhn", k[1] != "fashion_mnist", k[:2], k[2] != "from scratch", k))
    for method, protocol, trunk, direction in order:
        cells = [_num(rows[method, protocol, trunk, direction].get(b)) for b in lengths]
        lines.append(f"| [{titles.get(method, method)}](docs/methods/{method}.md) | {kinds.get(method, '')} | "
                     f"`{protocol}` | {trunk} | {direction} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _wrap(text, width=100):
    return textwrap.fill(text, width, break_long_words=False, break_on_hyphens=False)


def replace_block(text, content, name="the file", begin=BEGIN, end=END):
    """`text` with what lies between the markers replaced by `content`."""
    if text.count(begin) != 1 or text.count(end) != 1 or text.index(begin) > text.index(end):
        raise ValueError(f"{name} needs exactly one {begin} ... {end} block")
    head, rest = text.split(begin)
    _, tail = rest.split(end)
    return f"{head}{begin}\n{content}\n{end}{tail}"


def methods_table(text):
    """README.md's text with its methods table rewritten from the registry (`registry.markdown_table`)."""
    sys.path.insert(0, str(REPO))
    from tfhash import registry  # stdlib only: the records, no TensorFlow

    table = registry.markdown_table()
    lines = text.split("\n")
    start = lines.index(table[0])
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return "\n".join(lines[:start] + table + lines[end:])


def expected(records=None, repo=REPO):
    """{path: the file's text with its block regenerated} for README.md and each page with markers."""
    records = read_records(Path(repo) / "bench" / "results") if records is None else records
    sys.path.insert(0, str(REPO))
    from tfhash import registry  # stdlib only: the records, no TensorFlow

    titles = {m: registry.get(m).title for m in registry.names()}
    readme = Path(repo) / "README.md"
    zoo = Path(repo) / "tfhash" / "zoo"
    manifest = json.loads((zoo / "manifest.json").read_text())
    recipes = {e["recipe"]: json.loads((zoo / e["recipe"]).read_text()) for e in manifest["entries"].values()}
    text = replace_block(readme.read_text(), readme_block(records, titles), readme.name)
    kinds = {m: registry.get(m).kind for m in registry.names()}
    text = replace_block(text, zoo_block(manifest, recipes, titles, kinds), readme.name, ZOO_BEGIN, ZOO_END)
    out = {readme: methods_table(text)}
    for page in sorted((Path(repo) / "docs" / "methods").glob("*.md")):
        text = page.read_text()
        if BEGIN not in text:
            continue
        method = page.stem
        hint = f".venv/bin/python bench/methods.py --method {method}"
        out[page] = replace_block(text, block(records, {method}, hint, "../../bench/results"), page.name)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 where a block is stale")
    args = parser.parse_args(argv)
    stale = []
    for path, text in expected().items():
        if path.read_text() != text:
            stale.append(path)
            if not args.check:
                path.write_text(text)
    for path in stale:
        print(f"{'stale' if args.check else 'rewrote'}: {path.relative_to(REPO)}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
