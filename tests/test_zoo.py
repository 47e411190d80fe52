"""The pretrained zoo: a zoo folder (manifest + one tiny trained encoder) served
over HTTP on 127.0.0.1, and every way fetching it can go: first download,
cache hit, corrupted cache, wrong hash, unknown name, a file name escaping the
cache, no network, a missing file, an entry a local zoo has not published;
what `list` says can be fetched; download progress on a terminal and off it;
`from_preset` and the `tfhash zoo` command; publishing (`tfhash.publish`, from
a recipe or a run of it) and the recipes behind the entries. The zoo on the
Hugging Face Hub: tests/test_hub.py."""

import dataclasses
import functools
import hashlib
import http.server
import io
import json
import shutil
import sys
import threading

import keras
import numpy as np
import pytest

import method_checks
from tfhash import cli, publish, recipes, registry, training, zoo
from tfhash.data import load_protocol, pairwise_batches
from tfhash.models import BGAN, DHN, UGACH, BGANEncoder, HashModel

NAME = "dhn_digits_16"


@pytest.fixture(scope="module")
def digits():
    return load_protocol("digits")


@pytest.fixture(scope="module")
def zoo_folder(digits, tmp_path_factory):
    """A zoo folder as published: the encoder file and a manifest naming its sha256."""
    folder = tmp_path_factory.mktemp("zoo")
    keras.utils.set_random_seed(0)
    model = DHN(bits=16, input_shape=(8, 8, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    images, labels = digits.subset("train")
    model.fit(pairwise_batches(images, labels, 50), epochs=1, verbose=0)
    model.save(str(folder / f"{NAME}.keras"))
    data = (folder / f"{NAME}.keras").read_bytes()
    entry = {
        "class": "DHN", "file": f"{NAME}.keras", "sha256": hashlib.sha256(data).hexdigest(), "size": len(data),
        "bits": 16, "protocol": "digits", "recipe": "recipes/dhn_digits_16.json",
        "input": {"name": "images", "shape": [8, 8, 1], "dtype": "uint8", "preprocessing": "raw pixels 0-255"},
        "metric": {"name": "map@all", "value": 0.5, "tolerance": 0.02},
    }
    (folder / "manifest.json").write_text(json.dumps({"format": 1, "entries": {NAME: entry}}))
    return folder, model


class _Server:
    """Serves a folder on 127.0.0.1 and counts the requests."""

    def __init__(self, folder):
        self.requests = []
        server = self

        class Handler(http.server.SimpleHTTPRequestHandler):
            def log_message(self, *args):
                server.requests.append(self.path)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=folder))
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def served(zoo_folder, tmp_path, monkeypatch):
    """The zoo folder behind HTTP, its manifest in use, an empty cache."""
    folder, model = zoo_folder
    server = _Server(folder)
    monkeypatch.setenv(zoo.URL_ENV, server.url)
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(folder / "manifest.json"))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    yield server, model, tmp_path / "cache"
    server.close()


def _edit_manifest(tmp_path, monkeypatch, **changes):
    manifest = json.loads(open(zoo.manifest_path()).read())
    manifest["entries"][NAME].update(changes)
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(manifest))
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(path))


def test_list_describes_the_entries(served):
    (item,) = zoo.list()
    assert item["name"] == NAME and item["class"] == "DHN" and item["bits"] == 16
    assert item["metric"] == {"name": "map@all", "value": 0.5, "tolerance": 0.02}


def test_load_downloads_once_then_uses_the_verified_cache(served, digits):
    server, model, cache = served
    images, _ = digits.subset("query")
    loaded = zoo.load(NAME)
    assert isinstance(loaded, DHN)
    np.testing.assert_array_equal(loaded.encode(images), model.encode(images))
    assert server.requests == [f"/{NAME}.keras"]
    assert zoo.verify(NAME) and sorted(p.name for p in cache.iterdir()) == [f"{NAME}.keras"]  # nothing partial
    np.testing.assert_array_equal(zoo.load(NAME).encode(images), model.encode(images))
    assert len(server.requests) == 1  # the second load read the cache


def test_a_corrupted_cached_file_is_fetched_again(served):
    server, _, cache = served
    path = zoo.download(NAME)
    with open(path, "r+b") as f:
        f.write(b"garbage")
    assert not zoo.verify(NAME)
    assert zoo.download(NAME) == path and zoo.verify(NAME) and len(server.requests) == 2


def test_wrong_hash_is_refused_and_leaves_the_cache_clean(served, tmp_path, monkeypatch):
    _, _, cache = served
    _edit_manifest(tmp_path, monkeypatch, sha256="0" * 64)
    with pytest.raises(zoo.ZooError, match=r"sha256 mismatch .* expected 0{64}, received [0-9a-f]{64} .*removed"):
        zoo.load(NAME)
    assert list(cache.iterdir()) == []
    assert not zoo.verify(NAME)


def test_unknown_name_lists_the_available_ones(served):
    with pytest.raises(zoo.ZooError, match=rf"Unknown zoo entry 'dhn_cifar_99'. Available: \['{NAME}'\]"):
        zoo.download("dhn_cifar_99")


@pytest.mark.parametrize("file", ["../outside.keras", "/etc/passwd", "sub/../../x.keras"])
def test_a_file_name_escaping_the_cache_is_refused(served, tmp_path, monkeypatch, file):
    server, _, _ = served
    _edit_manifest(tmp_path, monkeypatch, file=file)
    with pytest.raises(zoo.ZooError, match="escapes the cache .*: refused"):
        zoo.download(NAME)
    assert server.requests == [] and not (tmp_path / "outside.keras").exists()


def test_no_network_is_a_clear_error(served, monkeypatch):
    _, _, cache = served
    monkeypatch.setenv(zoo.URL_ENV, "http://127.0.0.1:9/")  # the discard port: nothing listens
    with pytest.raises(zoo.ZooError, match=rf"Could not download zoo entry '{NAME}' from http://127.0.0.1:9/{NAME}"
                                           r".*set TFHASH_ZOO_URL to a mirror or an offline copy"):
        zoo.download(NAME)
    assert list(cache.iterdir()) == []


def test_a_file_missing_at_the_base_url_is_a_clear_error(served, tmp_path, monkeypatch):
    _edit_manifest(tmp_path, monkeypatch, file="missing.keras")
    with pytest.raises(zoo.ZooError, match="Could not download .*404"):
        zoo.download(NAME)


def test_an_offline_copy_works_through_a_file_url(zoo_folder, tmp_path, monkeypatch):
    folder, model = zoo_folder
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    monkeypatch.setenv(zoo.URL_ENV, copy.as_uri())
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(copy / "manifest.json"))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    assert zoo.verify(NAME) is False
    zoo.download(NAME)
    assert zoo.verify(NAME)


def test_from_preset_checks_the_class(served, digits):
    _, model, _ = served
    images, _ = digits.subset("query")
    np.testing.assert_array_equal(DHN.from_preset(NAME).encode(images), model.encode(images))
    assert isinstance(HashModel.from_preset(NAME), DHN)
    with pytest.raises(ValueError, match=f"Preset '{NAME}' holds a DHN: expected a BGANEncoder"):
        BGANEncoder.from_preset(NAME)
    with pytest.raises(ValueError, match=f"Preset '{NAME}' holds a DHN: expected an encoder of BGAN"):
        BGAN.from_preset(NAME)


def test_from_preset_takes_a_keras_file_a_run_folder_and_overrides(served, digits, tmp_path):
    _, model, _ = served
    images, _ = digits.subset("query")
    model.save(str(tmp_path / "mine.keras"))
    run = tmp_path / "run"
    run.mkdir()
    model.save(str(run / "image_encoder.keras"))
    (run / "run.json").write_text("{}")
    single = tmp_path / "single"
    single.mkdir()
    model.save(str(single / "whatever.keras"))
    for preset in (tmp_path / "mine.keras", run, str(single)):
        np.testing.assert_array_equal(DHN.from_preset(preset).encode(images), model.encode(images))
    renamed = HashModel.from_preset(tmp_path / "mine.keras", name="renamed")
    assert renamed.name == "renamed"
    np.testing.assert_array_equal(renamed.encode(images), model.encode(images))  # the weights kept
    with pytest.raises(ValueError, match=r"Unknown config key \['nope'\] for DHN"):
        DHN.from_preset(tmp_path / "mine.keras", nope=1)
    with pytest.raises(FileNotFoundError, match="No preset at .*absent.keras"):
        DHN.from_preset(str(tmp_path / "absent.keras"))
    with pytest.raises(FileNotFoundError, match="No text encoder in the run directory"):
        DHN.from_preset(run, modality="text")


def test_load_needs_the_class_registered(tmp_path, monkeypatch):
    # The zoo imports no model (the models import the zoo): an unregistered class is named, not imported.
    entry = {"class": "Unregistered", "file": "x.keras", "sha256": "0" * 64, "size": 1, "bits": 16, "input": {},
             "protocol": "digits", "metric": {}, "recipe": "recipes/x.json"}
    (tmp_path / "manifest.json").write_text(json.dumps({"format": 1, "entries": {"x": entry}}))
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(tmp_path / "manifest.json"))
    with pytest.raises(zoo.ZooError, match=r"needs the class Unregistered registered: import tfhash.models first, "
                                           r"or load it with tfhash.models.HashModel.from_preset\('x'\)"):
        zoo.load("x")


def test_malformed_manifests_are_refused(tmp_path, monkeypatch):
    path = tmp_path / "manifest.json"
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(path))
    with pytest.raises(zoo.ZooError, match="No zoo manifest at"):
        zoo.list()
    path.write_text(json.dumps({"format": 1, "entries": {"x": {"file": "x.keras"}}}))
    with pytest.raises(zoo.ZooError, match=r"entry 'x' is malformed: missing \['sha256', 'size'"):
        zoo.list()
    path.write_text(json.dumps({"format": 2, "entries": {}}))
    with pytest.raises(zoo.ZooError, match="format 2; expected 1"):
        zoo.list()


def test_cli_lists_downloads_and_verifies(served, capsys):
    assert cli.main(["zoo", "list"]) == 0
    assert NAME in capsys.readouterr().out
    assert cli.main(["zoo", "verify", NAME]) == 2
    assert "not in the cache" in capsys.readouterr().err
    assert cli.main(["zoo", "download", NAME]) == 0
    assert capsys.readouterr().out.strip().endswith(f"{NAME}.keras")
    assert cli.main(["zoo", "verify", NAME]) == 0
    assert cli.main(["zoo", "download", "nope"]) == 2
    assert "Unknown zoo entry 'nope'" in capsys.readouterr().err


def test_list_says_which_files_can_be_had(served, zoo_folder, tmp_path, monkeypatch, capsys):
    server, _, _ = served
    # Over HTTP: not asked by default; asked (a HEAD request) with check.
    assert [item["status"] for item in zoo.list()] == [zoo.REMOTE] and server.requests == []
    assert zoo.list(check=True)[0]["status"] == zoo.AVAILABLE and server.requests == [f"/{NAME}.keras"]
    zoo.download(NAME)
    assert zoo.list()[0]["status"] == zoo.CACHED
    _edit_manifest(tmp_path, monkeypatch, file="missing.keras")
    assert zoo.list(check=True)[0]["status"] == zoo.NOT_PUBLISHED  # the server's 404
    # A local zoo: whether the file is there, without reading it.
    copy = tmp_path / "copy"
    shutil.copytree(zoo_folder[0], copy)
    monkeypatch.setenv(zoo.URL_ENV, copy.as_uri())
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(copy / "manifest.json"))
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "empty_cache"))
    assert zoo.list()[0]["status"] == zoo.AVAILABLE
    (copy / f"{NAME}.keras").unlink()
    assert zoo.list()[0]["status"] == zoo.NOT_PUBLISHED
    capsys.readouterr()
    assert cli.main(["zoo", "list"]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines()[1].startswith(NAME) and out.splitlines()[1].endswith("  not published")
    assert f"1 of 1 entries are not published at {copy.as_uri()}/: `tfhash zoo publish RECIPE --zoo-dir {copy}`" in err


def test_an_entry_a_local_zoo_lacks_says_how_to_publish_it(zoo_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(zoo.URL_ENV, raising=False)
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    packaged = zoo.manifest_path().parent.resolve()
    if (packaged / "files" / "dhn_fashion_mnist_32.keras").exists():
        pytest.skip("this checkout has published dhn_fashion_mnist_32 into tfhash/zoo")
    # The package's zoo: its recipe by name, its folder, no word of a network.
    with pytest.raises(zoo.ZooError) as error:
        DHN.from_preset("dhn_fashion_mnist_32")
    message = str(error.value)
    assert message.startswith("Zoo entry 'dhn_fashion_mnist_32' is not published here: no file "
                              f"{packaged}/files/dhn_fashion_mnist_32.keras. Publish it with `tfhash zoo publish "
                              f"dhn_fashion_mnist_32 --zoo-dir {packaged}`")
    assert "TFHASH_ZOO_URL to a published zoo" in message and "network" not in message and "\n" not in message
    # Another local zoo: its recipe by its file there (`zoo publish` takes a recipe file).
    copy = tmp_path / "copy"
    shutil.copytree(zoo_folder[0], copy)
    (copy / f"{NAME}.keras").unlink()
    (copy / "recipes").mkdir()
    (copy / "recipes" / f"{NAME}.json").write_text("{}")
    monkeypatch.setenv(zoo.URL_ENV, copy.as_uri())
    assert cli.main(["zoo", "download", NAME]) == 2
    assert (f"`tfhash zoo publish {copy}/recipes/{NAME}.json --zoo-dir {copy}`"
            in capsys.readouterr().err)


def test_download_progress_is_one_line_off_a_terminal_and_none_when_quiet(served, capsys):
    server, _, cache = served
    assert cli.main(["zoo", "download", NAME]) == 0
    out, err = capsys.readouterr()
    size = zoo.entry(NAME)["size"]
    assert out.strip().endswith(f"{NAME}.keras")  # stdout: the path alone
    assert err == f"downloaded {NAME} ({size / 1e6:.1f} MB, sha256 verified) from {server.url}{NAME}.keras\n"
    assert cli.main(["zoo", "download", NAME]) == 0 and capsys.readouterr().err == ""  # cached: nothing said
    shutil.rmtree(cache)
    assert cli.main(["zoo", "download", NAME, "--quiet"]) == 0
    assert capsys.readouterr().err == "" and len(server.requests) == 2


def test_download_progress_is_redrawn_on_a_terminal(served, monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stdout", Terminal())
    monkeypatch.setattr(sys, "stderr", Terminal())
    zoo.download(NAME, progress=True)
    size = zoo.entry(NAME)["size"]  # 1.7 MB: two blocks of 1 MiB read, each redraws the line
    frames = [f"downloading {NAME}: {min(end, size) / 1e6:.1f}/{size / 1e6:.1f} MB"
              for end in range(2**20, size + 2**20, 2**20)]
    assert len(frames) == 2 and sys.stderr.getvalue() == "\r" + "\r".join(frames) + "\n"  # no ANSI codes
    monkeypatch.setattr(sys, "stdout", io.StringIO())  # stdout piped: the one line instead
    zoo.download(NAME, progress=True, force=True)
    assert sys.stderr.getvalue().endswith(f"MB\ndownloaded {NAME} ({size / 1e6:.1f} MB, sha256 verified) from "
                                          f"{served[0].url}{NAME}.keras\n")


def test_publish_takes_a_run_of_the_recipe_without_training(digits, tmp_path, monkeypatch, capsys):
    recipe = {"name": "dhn_digits_16", "method": "dhn", "protocol": "digits", "bits": 16, "seed": 0,
              "settings": {"epochs": 1, "batch_size": 50}}
    (tmp_path / "dhn_digits_16.json").write_text(json.dumps(recipe))
    run, zoo_dir = tmp_path / "run", tmp_path / "zoo"
    training.train(recipe=recipe, data=digits, output_dir=str(run), verbose=0)
    record = training.read_run(str(run))

    def no_training(*args, **kwargs):
        raise AssertionError("publish --run trained")

    monkeypatch.setattr(publish, "train", no_training)
    assert cli.main(["zoo", "publish", str(tmp_path / "dhn_digits_16.json"), "--run", str(run),
                     "--zoo-dir", str(zoo_dir)]) == 0
    assert "published dhn_digits_16\n" in capsys.readouterr().out
    item = zoo.read_manifest(zoo_dir / "manifest.json")["entries"]["dhn_digits_16"]
    # The run's encoder, byte for byte; its score and time; the recipe copied as written.
    assert item["sha256"] == record["files"]["image_encoder.keras"] == zoo.sha256(run / "image_encoder.keras")
    assert item["metric"] == {"name": "map@all", "value": round(record["scores"]["image"]["map"], 4), "tolerance": 0.01}
    assert item["train_seconds"] == record["train_seconds"] and item["class"] == "DHN"
    assert json.loads((zoo_dir / item["recipe"]).read_text()) == recipe
    assert item["input"]["shape"] == [8, 8, 1] and item["size"] == (zoo_dir / item["file"]).stat().st_size
    # A recipe the run was not trained with: refused in one line naming what differs; nothing written.
    other = {**recipe, "seed": 1, "settings": {"epochs": 2, "batch_size": 50}}
    (tmp_path / "other.json").write_text(json.dumps(other))
    manifest = (zoo_dir / "manifest.json").read_bytes()
    assert cli.main(["zoo", "publish", str(tmp_path / "other.json"), "--run", str(run), "--zoo-dir",
                     str(zoo_dir)]) == 2
    err = capsys.readouterr().err
    assert (f"The run {run} is not a run of the recipe 'dhn_digits_16': seed (run 0, recipe 1), settings.epochs "
            f"(run 1, recipe 2) differ.") in err and err.count("\n") == 1
    assert (zoo_dir / "manifest.json").read_bytes() == manifest
    # Without a recipe, the run's must be a published one; a folder without run.json is no run.
    with pytest.raises(ValueError, match=r"trained the recipe 'dhn_digits_16', which is not a published one"):
        publish.publish(run=run, zoo_dir=zoo_dir)
    with pytest.raises(ValueError, match=r"is not a run directory: expected run.json"):
        publish.publish(recipe, run=tmp_path, zoo_dir=zoo_dir)
    assert cli.main(["zoo", "publish", "--all", "--run", str(run)]) == 2
    assert "Expected a recipe, --run RUN or --all" in capsys.readouterr().err


@pytest.mark.slow
def test_publish_then_build_reproduces_the_manifest_map(tmp_path, monkeypatch, capsys):
    """A maintainer publishes a recipe; `tfhash zoo build` re-runs it from the
    manifest and gets the same mAP (one machine, seeded: exactly)."""
    zoo_dir = tmp_path / "zoo"
    recipe = {"name": "dhn_digits_16", "method": "dhn", "protocol": "digits", "bits": 16, "seed": 0,
              "settings": {"alpha": 0.25, "balanced": True, "epochs": 2, "batch_size": 50}}
    # The recipe may sit anywhere: publish copies it into the zoo folder.
    (tmp_path / "dhn_digits_16.json").write_text(json.dumps(recipe))
    assert cli.main(["zoo", "publish", str(tmp_path / "dhn_digits_16.json"), "--zoo-dir", str(zoo_dir)]) == 0
    assert json.loads((zoo_dir / "recipes" / "dhn_digits_16.json").read_text()) == recipe
    monkeypatch.setenv(zoo.MANIFEST_ENV, str(zoo_dir / "manifest.json"))
    (item,) = zoo.list()
    published = zoo.entry("dhn_digits_16")
    assert published["recipe"] == "recipes/dhn_digits_16.json" and published["class"] == "DHN"
    assert published["input"] == {"name": "images", "shape": [8, 8, 1], "dtype": "uint8",
                                  "preprocessing": "raw pixels on a 0-255 scale; the model does its own preprocessing"}
    data = (zoo_dir / "files" / "dhn_digits_16.keras").read_bytes()
    assert published["sha256"] == hashlib.sha256(data).hexdigest() and published["size"] == len(data)
    assert 0.3 < item["metric"]["value"] <= 1 and item["metric"]["name"] == "map@all"
    capsys.readouterr()
    assert cli.main(["zoo", "build", "dhn_digits_16"]) == 0
    out = capsys.readouterr().out
    assert f"mAP {item['metric']['value']:.4f}, manifest {item['metric']['value']:.4f}" in out
    # A manifest figure the recipe cannot reach fails the build.
    manifest = json.loads((zoo_dir / "manifest.json").read_text())
    manifest["entries"]["dhn_digits_16"]["metric"]["value"] = 0.99
    (zoo_dir / "manifest.json").write_text(json.dumps(manifest))
    assert cli.main(["zoo", "build", "dhn_digits_16"]) == 2
    assert "outside the manifest's tolerance" in capsys.readouterr().err
    # The API finds the recipe beside a manifest given by path, not the one in use.
    monkeypatch.delenv(zoo.MANIFEST_ENV)
    result = publish.build("dhn_digits_16", manifest_file=zoo_dir / "manifest.json")
    assert result["measured"] == item["metric"]["value"] and result["expected"] == 0.99 and not result["ok"]


@pytest.mark.slow
def test_a_published_zoo_folder_serves_as_is(tmp_path, digits, monkeypatch):
    from tfhash.data import CrossModalData

    # Digits as image-text pairs (the 64 pixels thresholded to words), to keep it fast; the protocol
    # keeps its name (the recipe's) and says it has both modalities, as UGACH needs.
    images, labels = digits.images, digits.labels
    texts = (images.reshape(len(images), -1) >= 128).astype(np.uint8)
    protocol = dataclasses.replace(digits.protocol, modalities=("image", "text"))
    pairs = CrossModalData(protocol, images, texts, np.eye(10, dtype=np.uint8)[labels], digits.split)
    zoo_dir = tmp_path / "zoo"
    recipe = {"name": "ugach_digits_16", "method": "ugach", "protocol": "digits", "bits": 16, "seed": 0,
              "settings": {"feature_dims": 32, "hidden_units": 32, "epochs": 2, "pretrain_epochs": 1,
                           "batch_size": 50}}
    path = tmp_path / "ugach_digits_16.json"
    path.write_text(json.dumps(recipe))
    names = publish.publish(path, zoo_dir=zoo_dir, data=pairs)
    # DHN beside it: one zoo folder, two methods.
    dhn = {"name": "dhn_digits_16", "method": "dhn", "protocol": "digits", "bits": 16, "seed": 0,
           "settings": {"epochs": 1, "batch_size": 50}}
    (tmp_path / "dhn_digits_16.json").write_text(json.dumps(dhn))
    assert publish.publish(tmp_path / "dhn_digits_16.json", zoo_dir=zoo_dir, data=digits) == ["dhn_digits_16"]
    assert names == ["ugach_digits_16_image", "ugach_digits_16_text"]
    manifest = zoo.read_manifest(zoo_dir / "manifest.json")
    image, text = (manifest["entries"][n] for n in names)
    assert (image["class"], text["class"]) == ("UGACHImageEncoder", "UGACHTextEncoder")
    assert image["metric"]["name"] == "map@all image->text" and text["metric"]["name"] == "map@all text->image"
    assert image["input"]["shape"] == [8, 8, 1] and text["input"] == {
        "name": "bow", "shape": [64], "dtype": "float32",
        "preprocessing": "bag-of-words vector over the training vocabulary (tfhash.data protocol order)"}

    # The folder is a zoo as it is: served over HTTP, TFHASH_ZOO_URL is the one setting a user needs.
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    monkeypatch.setenv(zoo.CACHE_ENV, str(tmp_path / "cache"))
    server = _Server(zoo_dir)
    monkeypatch.setenv(zoo.URL_ENV, server.url)
    try:
        assert [item["name"] for item in zoo.list()] == ["dhn_digits_16", *names]
        (query_images, query_texts, query_labels), (database_images, database_texts, database_labels) = (
            pairs.subset("query"), pairs.subset("database"))
        # Each encoder fetched over HTTP is the file published, and scores what the manifest
        # says: its mAP@all (recomputed from its codes, apart from tfhash.metrics) against the
        # database side its entry names (images for DHN, the other modality for UGACH), within
        # the manifest's 4-decimal rounding.
        digit_labels, pair_labels = (digits.labels[digits.split.query], digits.labels[digits.split.database]), (
            query_labels, database_labels)
        # name: (class, query inputs, the entry that encodes the database side, database inputs, labels)
        sides = {"dhn_digits_16": (DHN, query_images, "dhn_digits_16", database_images, digit_labels),
                 names[0]: (UGACH, query_images, names[1], database_texts, pair_labels),
                 names[1]: (UGACH, query_texts, names[0], database_images, pair_labels)}
        fetched = {}
        for name, (cls, inputs, *_) in sides.items():
            fetched[name] = cls.from_preset(name)
            published = keras.saving.load_model(str(zoo_dir / manifest["entries"][name]["file"]))
            codes = fetched[name].encode(inputs)
            assert codes.shape == (len(inputs), 2)
            np.testing.assert_array_equal(codes, published.encode(inputs))
            assert zoo.verify(name)
        for name, (_, inputs, database_entry, database_inputs, labels) in sides.items():
            value = method_checks.map_by_hand(fetched[name].encode(inputs),
                                              fetched[database_entry].encode(database_inputs), *labels)
            assert abs(value - manifest["entries"][name]["metric"]["value"]) <= 0.5e-4 + 1e-12, name
        assert server.requests[0] == "/manifest.json" and "/files/dhn_digits_16.keras" in server.requests
    finally:
        server.close()


@pytest.mark.slow
def test_reproduce_runs_a_recipe_on_another_protocol(tmp_path, capsys):
    """`tfhash reproduce RECIPE --protocol P --bits B`: one command per table cell."""
    recipe = {"name": "dhn_small", "method": "dhn", "protocol": "fashion_mnist", "bits": 32, "seed": 0,
              "settings": {"alpha": 0.25, "balanced": True, "epochs": 2, "batch_size": 50}}
    path = tmp_path / "dhn_small.json"
    path.write_text(json.dumps(recipe))
    out_dir = tmp_path / "out"
    assert cli.main(["reproduce", str(path), "--protocol", "digits", "--bits", "16", "--output", str(out_dir)]) == 0
    out = capsys.readouterr().out
    saved = training.read_run(str(out_dir))
    # Another protocol and code length make another recipe, named for them; the settings are the file's.
    assert saved["recipe"]["protocol"] == "digits" and saved["recipe"]["bits"] == 16
    assert saved["recipe"]["name"] == "dhn_digits_16" and saved["recipe"]["settings"]["alpha"] == 0.25
    assert f"mAP@all (image): {saved['scores']['image']['map']:.4f}" in out
    encoder = keras.saving.load_model(str(out_dir / "image_encoder.keras"))
    assert encoder.bits == 16 and saved["scores"]["image"]["map"] > 0.3
    assert cli.main(["reproduce", str(path), "--protocol", "nope"]) == 2
    assert "Unknown protocol 'nope'" in capsys.readouterr().err


def test_the_published_manifest_is_consistent(monkeypatch):
    """zoo/manifest.json: every entry names an existing recipe of a registered
    method that produces it (completeness is the release check, below)."""
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    root = zoo.manifest_path().parent  # the package's zoo folder: the recipes are relative to it
    manifest = zoo.read_manifest(root / "manifest.json")
    published = set()
    for name, item in manifest["entries"].items():
        recipe = recipes.read(root / item["recipe"])
        assert recipe == recipes.published(recipe["name"]), name  # `tfhash reproduce NAME` runs it
        assert name in (recipe["name"], f"{recipe['name']}_image", f"{recipe['name']}_text"), name
        assert (item["bits"], item["protocol"]) == (recipe["bits"], recipe["protocol"])
        assert item["file"] == f"files/{name}.keras" and len(item["sha256"]) == 64 and item["size"] > 0
        published.add((recipe["method"], recipe["bits"]))
    assert {method for method, _ in published} <= set(registry.names())
    # Where the files were built on this machine, they are the ones the manifest names.
    for name, item in manifest["entries"].items():
        path = root / "files" / item["file"]
        if path.exists():
            assert zoo.sha256(path) == item["sha256"], name


@pytest.mark.slow
@pytest.mark.parametrize("method, settings", [("dhn", {"epochs": 2, "batch_size": 50}),
                                              ("dsh_gan", {"epochs": 2, "batch_size": 50, "labelled_fraction": 0.5})])
def test_training_a_recipe_calls_the_callers_callbacks_each_epoch(method, settings, digits):
    """Bench scripts add their own per-epoch figures to a recipe's run."""
    seen = []
    record = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: seen.append((epoch, sorted(logs))))
    recipe = {"name": f"{method}_digits_16", "method": method, "protocol": "digits", "bits": 16, "seed": 0,
              "settings": settings}
    result = training.train(recipe=recipe, data=digits, callbacks=[record], verbose=0)
    assert [epoch for epoch, _ in seen] == [0, 1] and "loss" in seen[0][1]
    assert len(result.history["loss"]) == 2
    # The score is the trained encoder's mAP@all, recomputed from its codes apart from tfhash.metrics.
    encoder = result.encoders["image"]
    (queries, query_labels), (database, database_labels) = digits.subset("query"), digits.subset("database")
    expected = method_checks.map_by_hand(encoder.encode(queries), encoder.encode(database), query_labels, database_labels)
    assert result.scores["image"]["map"] == pytest.approx(expected, rel=method_checks.MAP_RTOL)


def test_recipes_are_read_checked_and_found_by_name(tmp_path):
    recipe = recipes.published("dhn_fashion_mnist_32")
    assert (recipe["method"], recipe["bits"], recipe["protocol"]) == ("dhn", 32, "fashion_mnist")
    assert recipes.load("dhn_fashion_mnist_32") == recipe and "dhn_fashion_mnist_32" in recipes.published_names()
    with pytest.raises(ValueError, match=r"No published recipe 'dhn_cifar_7'. Expected one of \[.*'dhn_fashion_mnist_32'"):
        recipes.published("dhn_cifar_7")
    bad = tmp_path / "bad.json"
    bad.write_text('{"name": "x",')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        recipes.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"bad.json: A recipe must be a JSON object. Received: list"):
        recipes.read(bad)
    bad.write_text('{"name": "x", "method": "dhn"}')
    with pytest.raises(ValueError, match=r"\['name', 'method', 'protocol', 'bits', 'seed'\] required\). "
                                         r"Received: \['method', 'name'\]"):
        recipes.read(bad)
    # The nested settings of older recipes are refused, not silently ignored.
    bad.write_text(json.dumps({**{k: recipe[k] for k in ("name", "method", "protocol", "bits", "seed")},
                               "model": {"alpha": 0.25}, "train": {"epochs": 1}}))
    with pytest.raises(ValueError, match=r"A recipe has the keys .* Received: \[.*'model'.*'train'\]"):
        recipes.read(bad)


def test_a_recipe_resolves_to_flat_settings_over_the_defaults_and_other_methods_are_refused():
    # The zoo's 64-bit DHN recipe, field by field: what `tfhash train --recipe` and bench/methods.py run.
    # Its six settings, then DHN's constructor defaults for the rest.
    assert training.resolve(recipe="dhn_fashion_mnist_64") == {
        "name": "dhn_fashion_mnist_64", "method": "dhn", "protocol": "fashion_mnist", "bits": 64, "seed": 0,
        "data": {},
        "settings": {"alpha": 0.25, "balanced": True, "quantization_weight": 0.1, "epochs": 30, "batch_size": 128,
                     "learning_rate": 0.001,
                     "backbone": "small_cnn", "backbone_weights": None, "dropout": 0.0, "backbone_input_size": None,
                     "freeze_backbone": False, "quantization": "log_cosh", "activation": "tanh"},
    }
    # Flags over the recipe: a setting changes, the name stays (same protocol, bits and seed).
    flagged = training.resolve(recipe="dhn_fashion_mnist_64", epochs=2, alpha=1)
    assert flagged["settings"]["epochs"] == 2 and flagged["settings"]["alpha"] == 1.0
    assert flagged["name"] == "dhn_fashion_mnist_64"
    # A misspelt setting in a recipe is an error naming the known ones, not ignored.
    typo = {**recipes.published("dhn_fashion_mnist_32"), "settings": {"alpha_": 1}}
    with pytest.raises(ValueError, match=r"Unknown setting \['alpha_'\] for method 'dhn'. Expected one of: ") as error:
        training.resolve(recipe=typo)
    assert str(sorted(registry.get("dhn").defaults())) in str(error.value)
    with pytest.raises(ValueError, match=r"Recipe 'ssah_open_clip_art_32' trains 'ssah', not 'dhn'"):
        training.resolve("dhn", recipe="ssah_open_clip_art_32")


def test_the_release_check_names_each_registered_method_and_length_without_an_entry(monkeypatch, capsys):
    monkeypatch.delenv(zoo.MANIFEST_ENV, raising=False)
    monkeypatch.delenv(zoo.URL_ENV, raising=False)
    manifest = zoo.read_manifest()
    held = {(publish.entry_recipe(name, manifest)["method"], item["bits"])
            for name, item in manifest["entries"].items()}
    # A method registered and not yet published, and an entry taken out of the manifest.
    unpublished = dataclasses.replace(registry.get("dhn"), name="zz_unpublished")
    monkeypatch.setitem(registry.METHODS, "zz_unpublished", unpublished)
    dropped = next(name for name in manifest["entries"] if name.startswith("bgan_") and name.endswith("_64"))
    del manifest["entries"][dropped]
    expected = [(m, b) for m in registry.names() for b in (32, 64)
                if (m, b) not in held or (m, b) == ("bgan", 64)]
    assert ("zz_unpublished", 32) in expected and ("bgan", 64) in expected
    assert publish.missing(manifest) == expected
    monkeypatch.setattr(zoo, "read_manifest", lambda *a, **k: manifest)
    assert cli.main(["zoo", "missing"]) == 1
    out = capsys.readouterr().out
    assert "missing zz_unpublished 32 bits" in out and "missing bgan 64 bits" in out

