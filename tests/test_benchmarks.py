"""The standard benchmark protocols (CIFAR-10's three conventions, NUS-WIDE-21,
MIRFlickr-25K) for users with the data: database conventions, split sizes,
draw-once splits kept in the user's cache, the papers' metric variant, and the
CIFAR-10 loader on TFDS mock data (no download); and the benchmark tables of
README.md and docs/methods/*.md against bench/methods.py's committed records."""

import dataclasses
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tfhash import metrics, recipes, registry, training
from tfhash.data import load_protocol, protocols
from tfhash.data.cifar10 import load_cifar10
from tfhash.evaluation import evaluate_model
from tfhash.models import DHN


@pytest.mark.parametrize(
    "name, queries, train, database",
    [
        # DeepHash-pytorch "cifar10": the database excludes queries and training images.
        ("cifar10_54000", 1000, 5000, 54000),
        # "cifar10-1": every non-query image, training images included.
        ("cifar10_59000", 1000, 5000, 59000),
        # "cifar10-2": 1,000 queries per class; the database is the training set.
        ("cifar10_50000", 10000, 50000, 50000),
    ],
)
def test_cifar10_conventions_give_the_published_sizes(name, queries, train, database):
    labels = np.repeat(np.arange(10), 6000)  # CIFAR-10's 60,000 images, 6,000 per class
    protocol = protocols.get_protocol(name)
    split = protocol.draw(labels)
    assert (len(split.query), len(split.train), len(split.database)) == (queries, train, database)
    assert np.all(np.bincount(labels[split.query]) == queries // 10)
    assert not np.intersect1d(split.query, split.database).size
    if protocol.database == "rest":
        assert not np.intersect1d(split.train, split.database).size
    else:
        assert np.isin(split.train, split.database).all()
    assert protocol.map_k is None and protocol.normalization == "retrieved" and not protocol.committed


def test_multi_label_benchmarks_and_their_metric():
    nus, mir = protocols.get_protocol("nus_wide_21"), protocols.get_protocol("mirflickr25k")
    assert (nus.num_query, nus.num_train, nus.map_k) == (2100, 10500, 5000)
    assert (mir.num_query, mir.num_train, mir.map_k, mir.cross_modal) == (2000, 10000, None, True)
    split = mir.draw(np.zeros((20015, 24)))
    assert (len(split.query), len(split.train), len(split.database)) == (2000, 10000, 18015)
    with pytest.raises(ValueError, match=r"pass data_dir .*Received: data_dir=None"):
        load_protocol("mirflickr25k")


def test_unknown_database_convention_is_refused():
    with pytest.raises(ValueError, match=r"database must be one of \('non_query', 'rest', 'train'\). Received: database='all'"):
        protocols.draw_split(np.repeat(np.arange(2), 10), 1, 2, seed=0, database="all")


def test_cifar10_loader_reads_train_then_test_through_tfds(monkeypatch):
    import tensorflow_datasets as tfds

    from tfhash.data import remote

    # mock_data serves the examples in place of a download; the offline check would refuse first.
    monkeypatch.setattr(remote, "reachable", lambda url, timeout=remote.PROBE_SECONDS: True)
    with tfds.testing.mock_data(num_examples=7):
        images, labels = load_cifar10()
    assert images.shape == (14, 32, 32, 3) and images.dtype == np.uint8
    assert labels.shape == (14,) and labels.dtype == np.int64 and labels.max() < 10


def test_uncommitted_splits_are_drawn_once_and_kept(tmp_path, monkeypatch):
    monkeypatch.setenv("TFHASH_CACHE_DIR", str(tmp_path))
    # The digits data under an uncommitted protocol: the first load draws and saves.
    protocol = dataclasses.replace(protocols.PROTOCOLS["digits"], name="digits_uncommitted", committed=False,
                                   database="rest")
    monkeypatch.setitem(protocols.PROTOCOLS, protocol.name, protocol)
    assert protocol.split_path == str(tmp_path / "splits" / "digits_uncommitted.npz")
    first = load_protocol(protocol.name)
    saved = protocols.load_split(protocol.split_path)
    np.testing.assert_array_equal(saved.query, first.split.query)
    assert len(first.split.database) == 1797 - 100 - 500  # "rest"
    # Later loads read the saved file: spoil it and the load says so.
    protocols.save_split(dataclasses.replace(saved, labels_sha256="0" * 64), protocol.split_path)
    with pytest.raises(ValueError, match="This split indexes a different dataset"):
        load_protocol(protocol.name)


def test_evaluation_uses_the_protocols_metric_variant(monkeypatch):
    data = load_protocol("digits")
    data = dataclasses.replace(data, protocol=dataclasses.replace(data.protocol, map_k=50,
                                                                  normalization="min_k_relevant"))
    model = DHN(bits=16, input_shape=(8, 8, 1))
    result, query_codes, database_codes = evaluate_model(model, data, curve=False)
    query_labels, database_labels = data.labels[data.split.query], data.labels[data.split.database]
    expected = metrics.mean_average_precision(query_codes, database_codes, query_labels, database_labels, k=50,
                                              normalization="min_k_relevant")
    assert result["map_k"] == 50 and result["map"] == pytest.approx(expected)
    # An explicit option still wins.
    result, _, _ = evaluate_model(model, data, curve=False, map_k=None)
    assert result["map_k"] == "all"


def test_coco_loader_keeps_labelled_images_as_multi_hot_rows(monkeypatch):
    import tensorflow_datasets as tfds

    from tfhash.data import remote
    from tfhash.data.coco import load_coco

    monkeypatch.setattr(remote, "reachable", lambda url, timeout=remote.PROBE_SECONDS: True)  # as above

    with tfds.testing.mock_data(num_examples=6):
        images, labels = load_coco(image_size=16)
    # Mock examples have random objects; every kept row has at least one of the 80 labels.
    assert images.shape[1:] == (16, 16, 3) and images.dtype == np.uint8
    assert labels.shape == (len(images), 80) and labels.dtype == np.uint8
    assert 0 < len(images) <= 12 and labels.any(axis=1).all() and set(np.unique(labels)) <= {0, 1}
    coco = protocols.get_protocol("coco")
    assert (coco.num_query, coco.num_train, coco.map_k) == (5000, 10000, 5000)
    split = coco.draw(np.zeros((122218, 80)))
    assert (len(split.query), len(split.train), len(split.database)) == (5000, 10000, 117218)


# ---------------------------------------------------------------------------
# bench/methods.py's records (bench/results/METHOD_PROTOCOL.jsonl, committed) and the tables
# bench/tables.py generates from them in README.md and docs/methods/*.md. Nothing here trains.

REPO = Path(__file__).resolve().parents[1]


def _bench(name):
    """A script of bench/ (no package) as a module."""
    spec = importlib.util.spec_from_file_location(f"bench_{name}_under_test", REPO / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = _bench("tables")


def test_readme_and_method_pages_agree_with_the_committed_results():
    expected = tables.expected()
    assert REPO / "README.md" in expected
    lacking = sorted(f"docs/methods/{m}.md" for m in set(registry.names()) - {p.stem for p in expected})
    assert not lacking, (f"{lacking} lack the generated table: add a line {tables.BEGIN} and a line {tables.END} "
                         "(e.g. under a heading before '## Published figures'), then run bench/tables.py")
    stale = [str(path.relative_to(REPO)) for path, text in expected.items() if path.read_text() != text]
    assert not stale, f"{stale} disagree with bench/results/*.jsonl: run .venv/bin/python bench/tables.py"


def test_committed_records_are_whole_and_name_their_recipe():
    records = tables.read_records()
    assert any(r["method"] == "dhn" and r["protocol"] == "fashion_mnist" for r in records)
    published = recipes.published_names()
    standing = tables.latest(records)
    for record in records:
        path = tables.results_path(record["method"], record["protocol"])
        assert path.is_file(), f"a {record['method']} record on {record['protocol']} outside {path.name}"
        assert record["method"] in registry.names()
        # A record the recipe's later run superseded (same recipe and overrides) may hold its settings of then.
        if record["recipe"] is not None and record in standing:
            name, _, at = record["recipe"].partition("@")  # NAME@BITS: a recipe's settings at other bits
            assert name in published
            recipe = recipes.published(name)
            assert (recipe["method"], recipe["protocol"], int(at or recipe["bits"])) == (
                record["method"], record["protocol"], record["bits"])
            # The recorded settings are the recipe's, but for the overrides.
            changed = {k: v for k, v in recipe["settings"].items() if record["settings"].get(k) != v}
            assert set(changed) <= set(record["overrides"])
        cross_modal = protocols.get_protocol(record["protocol"]).cross_modal
        directions = ["image_to_text", "text_to_image"] if cross_modal else ["image_to_image"]
        for figures in (record["scores"], record["untrained"], *record["baselines"].values()):
            assert [d for d in figures if d != "fit_seconds"] == directions
            for d in directions:
                assert set(figures[d]) == {"map", "precision@100", "precision@r2", "recall@r2"}
                assert all(0 <= v <= 1 for v in figures[d].values())
        assert set(record["baselines"]) == ({"cca_itq"} if cross_modal else {"lsh", "itq"})
        assert record["command"].split()[1:3] == ["bench/methods.py", "--method"] and record["train_seconds"] > 0


def test_results_are_committed_and_scratch_outputs_ignored():
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    import subprocess

    def ignored(path):
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0

    assert not ignored("bench/results/dhn_fashion_mnist.jsonl")
    assert ignored("bench/results/reliability.json") and ignored("bench/results/bgan.png")


def _record(method, bits, map_, *, recipe=None, overrides=None, seed=0, date="2026-12-01", protocol="digits"):
    figures = {"image_to_image": {"map": map_, "precision@100": 0.5, "precision@r2": 0.25, "recall@r2": 0.1}}
    return {"method": method, "protocol": protocol, "bits": bits, "seed": seed, "recipe": recipe,
            "overrides": overrides or {}, "settings": {"epochs": 30, **(overrides or {})}, "data": {},
            "scores": figures, "train_seconds": 12.3, "untrained": figures,
            "baselines": {"lsh": {**figures, "fit_seconds": 0.1}},
            "versions": {}, "command": "python bench/methods.py --method x", "date": date, "cpus": 2}


def test_tables_keep_the_last_record_and_divide_by_dhns_recipe_run():
    records = [
        _record("dhn", 32, 0.50, date="2026-12-01"),
        _record("dhn", 32, 0.80, date="2026-12-02"),  # the same run again: the last record stands
        _record("dhn", 32, 0.72, overrides={"epochs": 5}),  # not the bar: a setting changed
        _record("dpsh", 32, 0.88, recipe="dpsh_digits_32", overrides={"epochs": 5}),
        _record("dpsh", 32, 0.60, seed=1),  # no DHN run at seed 1
    ]
    rows = {(r["method"], r["seed"], r["settings"]): r for r in tables.rows(records)}
    assert len(rows) == 4
    last = rows["dhn", "0", "defaults"]
    assert last["mAP@all"] == "**0.8000**" and last["date"] == "2026-12-02"
    assert rows["dhn", "0", "defaults, epochs=5"]["x DHN"] == "0.90"
    assert rows["dpsh", "0", "recipe `dpsh_digits_32`, epochs=5"]["x DHN"] == "1.10"
    assert rows["dpsh", "1", "defaults"]["x DHN"] == "–"
    assert [r["method"] for r in tables.rows(records, {"dpsh"})] == ["dpsh", "dpsh"]
    hint = tables.block([], {"dpsh"}, "bench/methods.py --method dpsh")
    assert hint == "No record yet. `bench/methods.py --method dpsh` trains, scores and appends one to `bench/results/`."
    page = f"# DPSH\n\n{tables.BEGIN}\nold\n{tables.END}\n\n## Next\n"
    assert tables.replace_block(page, "new") == f"# DPSH\n\n{tables.BEGIN}\nnew\n{tables.END}\n\n## Next\n"
    with pytest.raises(ValueError, match="exactly one"):
        tables.replace_block("# no markers\n", "new")


def test_readme_summary_has_one_figure_per_cell_from_the_canonical_runs():
    records = [
        _record("dhn", 32, 0.80), _record("dhn", 64, 0.84), _record("dhn", 16, 0.70),
        _record("dsh", 32, 0.81), _record("dsh", 64, 0.83),
        _record("dsh", 32, 0.99, overrides={"alpha": 1.0}),  # a changed setting: on the page, not here
        _record("dsh", 32, 0.98, seed=1),  # another seed: on the page, not here
        {**_record("dhn", 32, 0.54, protocol="open_clip_art_images"), "trunk": "lite0"},
        {**_record("dsh", 32, 0.50, protocol="open_clip_art_images"), "trunk": "lite0"},
    ]
    for r in records[-2:]:
        r["settings"].update(backbone="EfficientNetLite0", freeze_backbone=True)
    records[3]["train_seconds"] = 99.6
    maps, more = tables.summary(records, {"dhn": "DHN", "dsh": "DSH"})
    lines = maps.splitlines()
    # Columns two methods share (16 bits has DHN alone), from scratch first; rows DHN first, then the bars.
    assert lines[0] == ("| method | digits, 32 bits | digits, 64 bits "
                        "| Open Clip Art images, 32 bits, frozen EfficientNetLite0 |")
    assert lines[2] == "| [DHN](docs/methods/dhn.md) | 0.8000 | 0.8400 | 0.5400 |"
    assert lines[3] == "| [DSH](docs/methods/dsh.md) | 0.8100 | 0.8300 | 0.5000 |"
    assert lines[4].startswith("| untrained encoder") and lines[5].startswith("| LSH (pixels) | 0.8000 |")
    # _record's untrained and baseline figures are the record's own mAP: DHN's, the bar's, per column.
    assert lines[4].endswith("| 0.8000 | 0.8400 | 0.5400 |")
    assert more.splitlines()[3] == "| [DSH](docs/methods/dsh.md) | 0.5000 | 0.2500 | 100 | 0.5000 | 0.2500 | 12 |"
    for line in lines[2:] + more.splitlines()[2:]:  # one figure (or a dash) per cell
        for cell in line.strip("|").split("|")[1:]:
            assert re.fullmatch(r" (\d+(\.\d+)?|–) ", cell), (line, cell)
    assert tables.summary([_record("dhn", 32, 0.8)]) == ""  # one method: no shared column


def test_readme_zoo_table_has_a_row_per_entry_family_and_a_column_per_code_length():
    def entry(name, bits, value, metric="map@all"):
        return {"recipe": f"recipes/{name}.json", "metric": {"name": metric, "value": value}, "bits": bits}

    recipes = {
        "recipes/dsh_fashion_mnist_32.json": {"method": "dsh", "protocol": "fashion_mnist", "bits": 32, "settings": {}},
        "recipes/dsh_fashion_mnist_64.json": {"method": "dsh", "protocol": "fashion_mnist", "bits": 64, "settings": {}},
        "recipes/ssah_oca_lite0_32.json": {"method": "ssah", "protocol": "oca", "bits": 32,
                                           "settings": {"backbone": "EfficientNetLite0", "freeze_backbone": True}},
    }
    manifest = {"entries": {
        "a": entry("dsh_fashion_mnist_32", 32, 0.81), "b": entry("dsh_fashion_mnist_64", 64, 0.84),
        "c": entry("ssah_oca_lite0_32", 32, 0.7, "map@all image->text"),
        "d": entry("ssah_oca_lite0_32", 32, 0.8, "map@all text->image"),
    }}
    lines = tables.zoo_block(manifest, recipes, {"dsh": "DSH"}, {"dsh": "supervised"}).splitlines()
    assert lines[0] == "| method | kind | protocol | trunk | direction | 32 bits | 64 bits |"
    assert lines[2:] == [
        "| [DSH](docs/methods/dsh.md) | supervised | `fashion_mnist` | from scratch | image->image | 0.8100 | 0.8400 |",
        "| [ssah](docs/methods/ssah.md) |  | `oca` | frozen EfficientNetLite0 | image->text | 0.7000 | – |",
        "| [ssah](docs/methods/ssah.md) |  | `oca` | frozen EfficientNetLite0 | text->image | 0.8000 | – |",
    ]


def test_bench_methods_trunk_takes_dhns_variant_for_every_method():
    methods = _bench("methods")
    recipe, name, overrides = methods.plan("dsh", "open_clip_art_images", 32, trunk="lite0")
    dhn = recipes.published("dhn_open_clip_art_images_lite0_32")
    # DSH has no such recipe: its defaults, with DHN's trunk and loader, and those are not overrides.
    assert name is None and overrides == {} and recipe["data"] == dhn["data"]
    assert {k: recipe["settings"][k] for k in methods.TRUNK_SETTINGS} == \
        {k: dhn["settings"][k] for k in methods.TRUNK_SETTINGS}
    assert recipe["settings"]["alpha"] == registry.get("dsh").defaults()["alpha"]
    recipe, name, overrides = methods.plan("dhn", "open_clip_art_images", 32, trunk="lite0")
    assert name == "dhn_open_clip_art_images_lite0_32" and overrides == {}
    with pytest.raises(ValueError, match=r"--trunk lite0 takes DHN's recipe dhn_fashion_mnist_lite0_32"):
        methods.plan("dsh", "fashion_mnist", 32, trunk="lite0")


def test_bench_methods_plans_the_recipe_and_reuses_a_recorded_run(tmp_path, monkeypatch, capsys):
    methods = _bench("methods")
    recipe, name, overrides = methods.plan("dhn", "fashion_mnist", 32)
    assert name == "dhn_fashion_mnist_32" and overrides == {} and recipe["settings"]["alpha"] == 0.25
    recipe, name, overrides = methods.plan("dhn", "fashion_mnist", 32, seed=3, epochs=2)
    assert name == "dhn_fashion_mnist_32" and overrides == {"epochs": 2} and recipe["seed"] == 3
    recipe, name, overrides = methods.plan("dhn", "digits", 32)  # no recipe: the defaults
    assert name is None and overrides == {} and recipe["settings"] == registry.get("dhn").defaults()
    # No 16-bit recipe: the 32-bit one's settings (alpha 0.25, not the default 1) at 16 bits.
    at16, name, overrides = methods.plan("dhn", "fashion_mnist", 16)
    assert name == "dhn_fashion_mnist_32@16" and overrides == {} and at16["bits"] == 16
    assert at16["settings"] == methods.plan("dhn", "fashion_mnist", 32)[0]["settings"]
    assert registry.get("dhn").defaults()["alpha"] != at16["settings"]["alpha"]

    # --reuse: a recorded (method, protocol, bits, seed, data, settings) is not trained again.
    record = _record("dhn", 32, 0.9)
    record["settings"] = recipe["settings"]
    record["baselines"]["itq"] = record["baselines"]["lsh"]
    (tmp_path / "dhn_digits.jsonl").write_text(json.dumps(record) + "\n")
    monkeypatch.setattr(training, "train", lambda *a, **k: pytest.fail("trained a recorded run"))
    methods.main(["--method", "dhn", "--protocol", "digits", "--bits", "32", "--reuse", "--results", str(tmp_path)])
    out = capsys.readouterr().out
    assert "dhn 32 bits: reused the record of 2026-12-01" in out
    assert "| 32 | dhn | defaults | image->image | 0.9000 | 1.00 | 0.5000 | 0.2500 | 12 |" in out
    assert (tmp_path / "dhn_digits.jsonl").read_text().count("\n") == 1  # nothing appended
