"""The wheel: built offline from the checkout, installed apart from it, and
used from elsewhere. An installed tfhash must find its package data (the zoo
manifest and recipes, the committed splits and vocabulary) without the checkout."""

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # builds and installs a wheel, starts Pythons

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "tfhash")


def _run(args, cwd, env=None):
    """Runs `args`; returns stdout, failing the test with stderr on a non-zero exit."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(map(str, args))} exited {done.returncode}:\n{done.stderr[-4000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(site folder holding the installed wheel, the wheel's file names)."""
    tmp = tmp_path_factory.mktemp("packaging")
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the
    # checkout, and a stale build/lib would put deleted modules in the wheel.
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "*.keras")  # published files stay out
            shutil.copytree(ROOT / name, source / name, ignore=ignore)
        else:
            shutil.copy(ROOT / name, source / name)
    # --no-build-isolation: offline, with the setuptools of the `test` extra.
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", tmp / "dist", source],
         cwd=tmp)
    (wheel,) = (tmp / "dist").glob("tfhash-*.whl")
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--target", tmp / "site", wheel], cwd=tmp)
    with zipfile.ZipFile(wheel) as z:
        return tmp / "site", set(z.namelist())


def _python(site, code=None, args=()):
    """Runs the test's Python from a folder outside the checkout, with only the
    installed wheel on PYTHONPATH; returns stdout."""
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("TFHASH_") and key not in ("PYTHONPATH", "PYTHONSAFEPATH")}
    env["PYTHONPATH"] = str(site)
    return _run([sys.executable, *(["-c", code] if code else args)], cwd=site.parent, env=env)


def test_the_wheel_holds_the_package_data(installed):
    _, names = installed
    recipes = sorted(p.name for p in (ROOT / "tfhash" / "zoo" / "recipes").glob("*.json"))
    splits = sorted(p.name for p in (ROOT / "tfhash" / "data" / "splits").iterdir() if p.suffix in (".npz", ".json"))
    expected = {"tfhash/zoo/manifest.json", "tfhash/zoo/README.md", "tfhash/checks.py", "tfhash/_version.py",
                *(f"tfhash/zoo/recipes/{name}" for name in recipes),
                *(f"tfhash/data/splits/{name}" for name in splits)}
    assert recipes and "open_clip_art_vocabulary.json" in splits
    assert expected <= names, sorted(expected - names)
    assert not any(name.startswith("tests/") for name in names)


def test_the_installed_package_is_the_wheel_not_the_checkout(installed):
    site, _ = installed
    # The checkout's editable install (a .pth finder) must not shadow the wheel.
    out = _python(site, "import tfhash; print(tfhash.__file__); print(tfhash.__version__)").split()
    assert out[0].startswith(str(site)), out
    assert out[1] == tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


def test_the_installed_zoo_lists_its_entries_and_recipes(installed):
    site, _ = installed
    manifest = json.loads((ROOT / "tfhash" / "zoo" / "manifest.json").read_text())
    assert manifest["entries"]  # what the installed zoo lists is checked against it below
    lines = _python(site, args=["-m", "tfhash.cli", "zoo", "list"]).strip().splitlines()
    assert lines[0].split()[:2] == ["name", "class"]
    assert sorted(line.split()[0] for line in lines[1:]) == sorted(manifest["entries"])
    recipes = _python(site, "import importlib.resources as r, tfhash.zoo; "
                            "print(tfhash.zoo.__file__); "
                            "print(*sorted(p.name for p in (r.files('tfhash.zoo') / 'recipes').iterdir()))").split()
    assert recipes[0].startswith(str(site))
    assert recipes[1:] == sorted(p.name for p in (ROOT / "tfhash" / "zoo" / "recipes").glob("*.json"))


def test_the_installed_data_finds_its_splits_and_vocabulary(installed):
    site, _ = installed
    out = _python(site, "from tfhash.data import open_clip_art as o; print(o.VOCABULARY_PATH); "
                        "print(len(o.load_vocabulary()['words']))").split()
    assert out[0].startswith(str(site)) and int(out[1]) > 0


def test_the_installed_cli_lists_the_methods(installed):
    site, _ = installed
    from tfhash import registry

    out = _python(site, args=["-m", "tfhash.cli", "methods"])
    assert [line.split()[0] for line in out.strip().splitlines()[1:]] == registry.names(), out


def test_every_package_tfhash_imports_is_declared():
    """Each third-party module imported anywhere in tfhash/ (found with ast,
    also inside functions) belongs to a distribution pyproject.toml declares,
    in `dependencies` or an extra: nothing may arrive only through another
    package's requirements (protobuf, pillow and scipy once did)."""
    import ast
    import importlib.metadata
    import re

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    requirements = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    declared = {re.split(r"[<>=!~\[; ]", r, maxsplit=1)[0].lower().replace("_", "-") for r in requirements}
    imported = set()
    for file in (ROOT / "tfhash").rglob("*.py"):
        for node in ast.walk(ast.parse(file.read_text())):
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = sorted(imported - set(sys.stdlib_module_names) - {"tfhash"})
    owners = importlib.metadata.packages_distributions()
    undeclared = {module: owners.get(module) for module in third_party
                  if not {d.lower().replace("_", "-") for d in owners.get(module, [])} & declared}
    assert third_party and not undeclared, f"imported but not declared in pyproject.toml: {undeclared}"
