"""Layering: the NumPy side imports no TensorFlow, `import tfhash` is light,
and tfhash's modules import each other without a cycle, counting the imports
inside functions."""

import ast
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import tfhash
import tfhash.registry

PACKAGE = Path(tfhash.__file__).parent


def _imports_in_fresh_process(code):
    """Runs `code` in a new interpreter; returns its last line of stdout."""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=PACKAGE.parent, env={**os.environ, "PYTHONPATH": str(PACKAGE.parent)})
    return out.stdout.strip().splitlines()[-1]


def test_numpy_side_imports_neither_tensorflow_nor_keras():
    line = _imports_in_fresh_process(
        "import tfhash.baselines, tfhash.index, tfhash.metrics, tfhash.checks, tfhash.zoo, sys; "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    assert line == "False False"


def test_import_tfhash_is_lazy():
    line = _imports_in_fresh_process(
        "import sys, tfhash; before = 'tensorflow' in sys.modules or 'keras' in sys.modules; "
        "index = tfhash.HammingIndex(bits=32); tfhash.metrics; tfhash.zoo; "
        "print(before, 'tensorflow' in sys.modules, type(index).__name__, tfhash.__version__)"
    )
    assert line == f"False False HammingIndex {tfhash.__version__}"


def test_import_tfhash_gives_every_submodule_its_docs_name():
    """`import tfhash; tfhash.serving.Client(...)`, as the README writes it (issue 29): every
    `tfhash.NAME` of the repository's Markdown resolves after a bare `import tfhash`, which
    still loads no TensorFlow until a name needs it."""
    repo = PACKAGE.parent
    pages = [path for path in repo.rglob("*.md")
             if not any(part.startswith(".") or part in ("runs", "build") for part in path.relative_to(repo).parts)]
    named = sorted({name for path in pages for name in re.findall(r"\btfhash\.([A-Za-z_]\w*)", path.read_text())})
    assert {"serving", "export", "models", "data", "index", "callbacks", "evaluation"} <= set(named), named
    line = _imports_in_fresh_process(
        "import sys, tfhash; light = 'tensorflow' not in sys.modules and 'keras' not in sys.modules; "
        f"missing = [name for name in {named!r} if not hasattr(tfhash, name)]; "
        "print(light, missing, missing or (tfhash.serving.Client.__name__, tfhash.export.TFLiteEncoder.__name__))"
    )
    assert line == "True [] ('Client', 'TFLiteEncoder')"


def test_the_command_line_parser_imports_no_tensorflow():
    # `tfhash --help` and argument errors answer without loading TensorFlow.
    line = _imports_in_fresh_process(
        "import sys; from tfhash import cli; cli.build_parser(); "
        "print('tensorflow' in sys.modules, 'keras' in sys.modules)"
    )
    assert line == "False False"


def test_the_lazy_names_resolve():
    names = [name for name, (module, _) in tfhash._LAZY.items() if importlib.util.find_spec(module) is not None]
    trainers = {record.trainer.partition(":")[2] for record in tfhash.registry.METHODS.values()}
    assert {"HammingIndex", "metrics", "zoo", "load_model", "train", "DHN"} | trainers <= set(names)
    for name in names:
        assert getattr(tfhash, name) is not None, name
    assert tfhash.DHN.__module__ == "tfhash.models.dhn" and tfhash.metrics.__name__ == "tfhash.metrics"
    assert set(tfhash.__all__) <= set(dir(tfhash))
    with pytest.raises(AttributeError, match="module 'tfhash' has no attribute 'nope'"):
        tfhash.nope  # noqa: B018


# --------------------------------------------------------------------------
# The import graph


def _modules(package=PACKAGE):
    """{dotted name: path} of every module of the package."""
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _ancestors(name):
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def _import_graph(package=PACKAGE):
    """{module: {(imported module, line)}}, from every import statement anywhere
    in each file: module level, functions, methods.

    `tfhash/__init__.py`'s lazy API (PEP 562 `__getattr__`, `importlib` on first
    use) is left out: it is the entry point for users, above everything, and
    `import tfhash` for `__version__` runs none of it. What keeps that true is
    `test_modules_do_not_use_the_lazy_names`: no module reaches a lazy name
    through `tfhash`, so each dependency shows up as the import of its module.
    """
    modules = _modules(package)
    graph = {name: set() for name in modules}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets += [(alias.name, node.lineno) for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, up level - 1
                    parent = name.split(".") if is_package else name.split(".")[:-1]
                    parent = parent[: len(parent) - (node.level - 1)]
                    base = ".".join(parent + ([base] if base else []))
                for alias in node.names:
                    # `from tfhash import zoo` imports the submodule; `from tfhash.models import DHN` the package.
                    submodule = f"{base}.{alias.name}"
                    targets.append((submodule if submodule in modules else base, node.lineno))
        for target, line in targets:
            if target not in modules:
                continue  # another package, or a tfhash module that does not exist yet
            # Importing a module first runs the __init__ of its packages, except those
            # the importer sits in (already imported by then).
            for module in [*_ancestors(target), target]:
                if module != name and module not in _ancestors(name):
                    graph[name].add((module, line))
    return graph


def _find_cycle(graph):
    """One cycle as [(module, line of its import of the next)...], or None."""
    edges = {name: sorted(targets) for name, targets in graph.items()}
    state, stack = {}, []

    def visit(name):
        state[name] = "open"
        for target, line in edges[name]:
            stack.append((name, line))
            if state.get(target) == "open":
                start = next(i for i, (module, _) in enumerate(stack) if module == target)
                return stack[start:]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
            stack.pop()
        state[name] = "done"
        return None

    for name in sorted(edges):
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return None


def test_the_graph_sees_function_level_and_package_imports():
    graph = _import_graph()
    targets = {name: {target for target, _ in edges} for name, edges in graph.items()}
    assert "tfhash.training" in targets["tfhash.cli"]  # inside a function
    assert "tfhash.zoo" in targets["tfhash.cli"]  # `from tfhash import zoo`: the submodule
    # The lazy API is not an import statement; the registry (light) names the trainers.
    assert targets["tfhash"] == {"tfhash._version", "tfhash.registry"}
    assert "tfhash.models.base" in targets["tfhash.models"]  # a package's __init__ and its modules
    assert not any(target.startswith("tfhash.models") for target in targets["tfhash.baselines"])
    assert "tfhash.serving.server" in targets["tfhash.serving.client"]
    assert "tfhash.serving" not in targets["tfhash.serving.client"]  # its own package: already imported


def test_the_cycle_check_finds_function_level_and_relative_cycles(tmp_path):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def f():\n    from pkg.sub import high\n")
    (package / "sub" / "__init__.py").write_text("from . import high\n")
    (package / "sub" / "high.py").write_text("from ..low import f\n")
    cycle = _find_cycle(_import_graph(package))
    assert cycle is not None and {module for module, _ in cycle} >= {"pkg.low", "pkg.sub.high"}
    (package / "low.py").write_text("def f():\n    pass\n")
    assert _find_cycle(_import_graph(package)) is None


def test_no_import_cycle():
    cycle = _find_cycle(_import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(
        f"{module} (line {line})" for module, line in cycle) + f" -> {cycle[0][0]}"


def test_modules_do_not_use_the_lazy_names():
    """`from tfhash import train` or `tfhash.DHN` inside tfhash would hide a
    dependency from the graph (the lazy API imports it); a module imports the
    module that defines the name. Submodules (`from tfhash import zoo`) and
    `tfhash.__version__` are fine."""
    modules = _modules()
    lazy = {name for name in tfhash._LAZY if f"tfhash.{name}" not in modules}
    offenders = []
    for path in modules.values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module == "tfhash" and not node.level:
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "tfhash":
                names = [node.attr]
            else:
                continue
            offenders += [f"{path.relative_to(PACKAGE.parent)}:{node.lineno} {name}" for name in names if name in lazy]
    assert offenders == []
