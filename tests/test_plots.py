"""Plots say what they show (issue 22): titles name the protocol, bits and
mAP; legends sit outside the data; coinciding lines stay distinguishable;
generated-image grids label each row; the retrieval picture marks relevant
neighbours. Every plot is a PNG written atomically. No training: fast."""

import importlib.util
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import to_hex  # noqa: E402

from tfhash import evaluation  # noqa: E402
from tfhash.callbacks import GeneratedImageGrid  # noqa: E402
from tfhash.evaluation import (  # noqa: E402
    IRRELEVANT_COLOR,
    RELEVANT_COLOR,
    neighbour_picture,
    plot_neighbours,
    plot_precision_recall,
)

ROOT = Path(__file__).resolve().parents[1]


def _png(path, min_height=100, min_width=100):
    """Reads back a written PNG: (height, width) of a plausible, non-empty image."""
    path = Path(path)
    assert path.stat().st_size > 0 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = matplotlib.image.imread(path)
    assert image.shape[0] >= min_height and image.shape[1] >= min_width and image.std() > 0
    assert not [p for p in path.parent.iterdir() if ".partial" in p.name]  # no temporary left behind
    return image.shape[:2]


def _extents(figure):
    """Lays the figure out; returns a function giving an artist's display box."""
    FigureCanvasAgg(figure)
    renderer = figure.canvas.get_renderer()
    figure.draw(renderer)
    return lambda artist: artist.get_window_extent(renderer)


def _curve(scale=1.0, offset=0.0, bits=16):
    recall = np.linspace(0, 1, bits + 1)
    return {"precision": np.clip(scale * (1 - 0.5 * recall) + offset, 0, 1), "recall": recall}


# Precision-recall


def test_precision_recall_title_names_protocol_bits_and_map_from_a_result(tmp_path):
    # The shape of evaluate_model(...)[0]: the CLI can pass its result whole.
    result = {"map": 0.84113, "map_k": "all", "bits": 32, "protocol": {"name": "fashion_mnist"},
              "pr_curve": _curve(bits=32)}
    figure = plot_precision_recall({"dhn": result}, tmp_path / "pr.png")
    title = figure.axes[0].get_title()
    assert "fashion_mnist protocol" in title and "32 bits" in title and "mAP@all 0.8411" in title
    assert "Hamming radius 0..32" in title
    assert [t.get_text() for t in figure.legends[0].get_texts()] == ["dhn, mAP 0.8411"]
    _png(tmp_path / "pr.png")


def test_precision_recall_explicit_arguments_and_legend_below_the_axes(tmp_path):
    curves = {"bgan": _curve(0.6), "dhn": _curve(), "dsh_gan": _curve()}  # dhn and dsh_gan coincide
    figure = plot_precision_recall(curves, tmp_path / "pr.png", title="Zoo encoders", protocol="Fashion-MNIST",
                                   bits=32, map={"bgan": 0.4891, "dhn": 0.8411, "dsh_gan": 0.8263})
    ax = figure.axes[0]
    assert ax.get_title() == ("Zoo encoders\nFashion-MNIST protocol, 32 bits, "
                              "mAP@all: bgan 0.4891, dhn 0.8411, dsh_gan 0.8263")
    assert ax.get_legend() is None and len(figure.legends) == 1
    extent = _extents(figure)
    assert extent(figure.legends[0]).y1 <= extent(ax).y0  # below the axes, off the data
    # The coinciding curves differ in marker, dash, width and marker size; the later one is drawn on top.
    dhn, dsh_gan = ax.lines[1], ax.lines[2]
    assert dhn.get_marker() != dsh_gan.get_marker() and dhn.get_linestyle() != dsh_gan.get_linestyle()
    assert dhn.get_linewidth() > dsh_gan.get_linewidth() and dhn.get_markersize() > dsh_gan.get_markersize()
    assert dsh_gan.get_zorder() > dhn.get_zorder()
    assert dhn.get_markerfacecolor() == "none"  # hollow: the one underneath shows through
    _png(tmp_path / "pr.png")


def test_precision_recall_old_calls_still_work(tmp_path):
    # bench/report.py's and the CLI's calls before issue 22: curves without scores, an optional title.
    figure = plot_precision_recall({"model, 16 bits": _curve()}, str(tmp_path / "a.png"))
    assert figure.axes[0].get_title() == "Precision-recall within Hamming radius 0..K"
    figure = plot_precision_recall({"m": _curve()}, str(tmp_path / "b.png"), title="Fashion-MNIST protocol, 32 bits")
    assert figure.axes[0].get_title() == "Fashion-MNIST protocol, 32 bits"
    _png(tmp_path / "a.png"), _png(tmp_path / "b.png")


def test_describe():
    assert evaluation.describe("fashion_mnist", 32, 0.84113) == "fashion_mnist protocol, 32 bits, mAP@all 0.8411"
    assert evaluation.describe({"name": "cifar10_54000"}, [64, 32, 32], map_k=1000) == (
        "cifar10_54000 protocol, 32 and 64 bits")
    assert evaluation.describe("NUS-WIDE protocol", 16, {"a": 0.5, "b": 0.25}, map_k=5000) == (
        "NUS-WIDE protocol, 16 bits, mAP@5000: a 0.5000, b 0.2500")
    assert evaluation.describe() == ""


# The retrieval picture


def _hand_built(multi_hot=False):
    """Two queries over six 8-bit codes, small enough to rank by hand.

    database codes: d0 00000000, d1 00000001, d2 00000011, d3 11111111, d4 00000111, d5 00000001
    q0 = 00000000: distances 0, 1, 2, 8, 3, 1 -> ranking d0 (0), d1 (1), d5 (1, tie: later index), d2 (2), ...
    q1 = 11111111: distances 8, 7, 6, 0, 5, 7 -> ranking d3 (0), d4 (5), d2 (6), d1 (7), d5 (7), d0 (8)
    k = 3: q0 -> [0, 1, 5], distances [0, 1, 1]; q1 -> [3, 4, 2], distances [0, 5, 6].

    Class ids: queries [1, 2], database [1, 0, 1, 2, 2, 1]
      q0 (class 1): d0 1 yes, d1 0 no, d5 1 yes  -> [T, F, T]
      q1 (class 2): d3 2 yes, d4 2 yes, d2 1 no  -> [T, T, F]
    Multi-hot (3 labels): q0 [1,0,0], q1 [0,1,1]; d0 [1,1,0], d1 [0,1,0], d2 [1,0,1], d3 [0,0,1], d4 [1,0,0], d5 [0,1,1]
      q0 shares label 0 with: d0 yes, d1 no, d5 no      -> [T, F, F]
      q1 shares label 1 or 2 with: d3 yes, d4 no, d2 yes -> [T, F, T]
    """
    database_codes = np.array([[0b00000000], [0b00000001], [0b00000011], [0b11111111], [0b00000111], [0b00000001]],
                              np.uint8)
    query_codes = np.array([[0b00000000], [0b11111111]], np.uint8)
    if multi_hot:
        query_labels = np.array([[1, 0, 0], [0, 1, 1]])
        database_labels = np.array([[1, 1, 0], [0, 1, 0], [1, 0, 1], [0, 0, 1], [1, 0, 0], [0, 1, 1]])
    else:
        query_labels, database_labels = np.array([1, 2]), np.array([1, 0, 1, 2, 2, 1])
    # Each image a flat 4x4 square of a value naming it: query i 200 + i, database item j 10 * j.
    query_images = np.full((2, 4, 4, 1), 200) + np.arange(2)[:, None, None, None]
    database_images = np.full((6, 4, 4, 1), 10) * np.arange(6)[:, None, None, None]
    return query_codes, database_codes, query_images, database_images, query_labels, database_labels


@pytest.mark.parametrize("multi_hot, golden", [
    (False, [[True, False, True], [True, True, False]]),
    (True, [[True, False, False], [True, False, True]]),
])
def test_neighbour_picture_ranks_and_marks_relevance_by_hand(tmp_path, multi_hot, golden):
    path = tmp_path / "neighbours.png"
    picture = neighbour_picture(*_hand_built(multi_hot), path, n_queries=2, k=3, protocol="toy", map=0.5,
                                label_names=["zero", "one", "two"])
    np.testing.assert_array_equal(picture.queries, [0, 1])
    np.testing.assert_array_equal(picture.neighbours, [[0, 1, 5], [3, 4, 2]])
    np.testing.assert_array_equal(picture.distances, [[0, 1, 1], [0, 5, 6]])
    np.testing.assert_array_equal(picture.relevant, golden)
    figure = picture.figure
    axes = {ax.get_label(): ax for ax in figure.axes}
    for i in range(2):
        assert axes[f"query {i}"].images[0].get_array()[0, 0] == 200 + i
        for j in range(3):
            ax = axes[f"neighbour {i},{j}"]
            # The neighbour's own image, framed green (relevant) or red, with a check mark or a cross.
            assert ax.images[0].get_array()[0, 0] == 10 * picture.neighbours[i, j]
            frame = to_hex(ax.spines["top"].get_edgecolor())
            assert frame == (RELEVANT_COLOR if golden[i][j] else IRRELEVANT_COLOR)
            assert ax.get_xlabel().startswith("\u2713" if golden[i][j] else "\u2717")
            assert ax.get_xlabel().endswith(f"d={picture.distances[i, j]}")
    if not multi_hot:
        assert axes["query 0"].get_xlabel() == "#0: one" and axes["neighbour 0,1"].get_xlabel() == "\u2717 zero | d=1"
    title = figure.get_suptitle()
    assert "First 2 queries" in title and "toy protocol, 8 bits, mAP@all 0.5000" in title
    caption = " ".join(t.get_text() for t in figure.legends[0].get_texts())
    assert "green frame: relevant" in caption and "red frame: not relevant" in caption
    _png(path)


def test_neighbour_picture_takes_chosen_queries(tmp_path):
    picture = neighbour_picture(*_hand_built(), tmp_path / "n.png", queries=[1], k=2)
    np.testing.assert_array_equal(picture.neighbours, [[3, 4]])
    np.testing.assert_array_equal(picture.relevant, [[True, True]])
    assert picture.figure.get_suptitle().startswith("Queries 1 and their 2 nearest")


def test_plot_neighbours_draws_rgb_and_grayscale_and_checks_shapes(tmp_path):
    rng = np.random.default_rng(0)
    relevant = np.array([[True, False, True, False], [False, False, True, True]])
    figure = plot_neighbours(rng.uniform(0, 255, (2, 16, 16, 3)), rng.uniform(0, 255, (2, 4, 16, 16, 3)), relevant,
                             tmp_path / "rgb.png", title="toy protocol, 16 bits, mAP@all 0.5")
    assert figure.get_suptitle() == "toy protocol, 16 bits, mAP@all 0.5"
    height, width = _png(tmp_path / "rgb.png", min_height=150, min_width=300)
    assert width > height  # a row per query, a column per rank
    plot_neighbours(rng.integers(0, 256, (2, 16, 16)), rng.integers(0, 256, (2, 4, 16, 16)), relevant,
                    tmp_path / "gray.png")
    _png(tmp_path / "gray.png")
    with pytest.raises(ValueError, match="relevance"):
        plot_neighbours(np.zeros((2, 4, 4)), np.zeros((2, 3, 4, 4)), relevant, tmp_path / "bad.png")


# Generated-image grids


class _Generator:
    """What GeneratedImageGrid needs of a conditional generator: each image a
    flat square of 20 * its class."""

    name, bits, num_classes, noise_dim, multi_label = "dsh_gan", 32, 3, 2, False

    def generate(self, labels, noise):
        labels = np.asarray(labels)
        return np.broadcast_to((20 * labels).astype(np.uint8)[:, None, None, None], (len(labels), 6, 5, 1))


def test_generated_image_grid_labels_each_row(tmp_path):
    grids = GeneratedImageGrid(str(tmp_path / "grids"), per_class=4, class_names=["shirt", "shoe", "bag"])
    grids.set_model(_Generator())
    grids.on_epoch_end(1)
    assert grids.paths == [str(tmp_path / "grids" / "epoch_002.png")]
    _png(grids.paths[0])
    figure = grids.figure(epoch=2)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["shirt", "shoe", "bag"]
    np.testing.assert_allclose(ax.get_yticks(), [2.5, 8.5, 14.5])  # the middle of each 6-pixel row
    assert ax.get_title() == "dsh_gan: generated images\n32 bits, epoch 2"
    np.testing.assert_array_equal(ax.images[0].get_array()[::6, 0], [0, 20, 40])  # row c is class c


def test_generated_image_grid_default_labels_and_bare_grid(tmp_path):
    grids = GeneratedImageGrid(str(tmp_path / "grids"), per_class=4)
    grids.set_model(_Generator())
    assert grids.row_labels() == ["class 0", "class 1", "class 2"]
    bare = GeneratedImageGrid(str(tmp_path / "bare"), per_class=4, label_rows=False)
    bare.set_model(_Generator())
    bare.on_epoch_end(0)
    assert _png(bare.paths[0], min_height=18, min_width=20) == (3 * 6, 4 * 5)  # one pixel per pixel
    wrong = GeneratedImageGrid(str(tmp_path / "wrong"), class_names=["a", "b"])
    wrong.set_model(_Generator())
    with pytest.raises(ValueError, match="3 classes"):
        wrong.row_labels()


# bench/report.py's figures


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location("bench_report", ROOT / "bench" / "report.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _row(method, protocol, direction, bits, value):
    return {"method": method, "protocol": protocol, "direction": direction, "bits": bits, "map": value,
            "measured": None}


def test_map_vs_bits_names_what_it_shows_and_separates_close_lines(report, tmp_path):
    rows = [_row("dhn", "fashion_mnist", "image", 32, 0.8411), _row("dhn", "fashion_mnist", "image", 64, 0.8463),
            _row("ugach", "open_clip_art", "I->T", 32, 0.4115), _row("ugach", "open_clip_art", "I->T", 64, 0.4167),
            _row("ugach", "open_clip_art", "T->I", 32, 0.4125), _row("ugach", "open_clip_art", "T->I", 64, 0.4177)]
    figure = report.plot_map_vs_bits(rows, tmp_path / "map_vs_bits.png")
    ax = figure.axes[0]
    title = ax.get_title()
    assert "32 and 64 bits" in title and "mAP@all" in title
    assert "fashion_mnist protocol: image" in title and "open_clip_art protocol: I->T, T->I" in title
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels == ["dhn, fashion_mnist image: 0.8411 / 0.8463", "ugach, open_clip_art T->I: 0.4125 / 0.4177",
                      "ugach, open_clip_art I->T: 0.4115 / 0.4167"]
    extent = _extents(figure)
    assert extent(figure.legends[0]).x0 >= extent(ax).x1  # right of the axes
    close = ax.lines[1:]  # the two ugach lines, all but on top of each other
    assert close[0].get_marker() != close[1].get_marker() and close[0].get_linestyle() != close[1].get_linestyle()
    assert close[0].get_markersize() != close[1].get_markersize()
    _png(tmp_path / "map_vs_bits.png")


def test_bgan_plot_labels_its_baselines(report, tmp_path):
    def run(final, lsh, untrained):
        per_epoch = [{"epoch": e, "beta": [2, 5, 10][e - 1], "map": final - 0.01 * (3 - e)} for e in (1, 2, 3)]
        return {"map": final, "lsh": lsh, "untrained": untrained, "per_epoch": per_epoch}

    results = {"32": run(0.511, 0.371, 0.30), "64": run(0.508, 0.397, 0.32)}  # JSON keys, as bench/bgan.py writes
    figure = report.plot_bgan(results, tmp_path / "bgan.png")
    title = figure.axes[0].get_title()
    assert "fashion_mnist protocol, 32 and 64 bits, mAP@all: 32 bits 0.5110, 64 bits 0.5080" in title
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert "LSH, 32 bits (0.3710)" in labels and "LSH, 64 bits (0.3970)" in labels
    assert "untrained encoder, 64 bits (0.3200)" in labels and "beta (right axis)" in labels
    assert {t.get_text() for t in figure.axes[0].texts} == {"LSH 32", "LSH 64", "untrained encoder 32",
                                                            "untrained encoder 64"}
    _png(tmp_path / "bgan.png")
