"""`tfhash.signatures` reads a trainer's settings from source as Python itself would
see them: checked against the imported classes (inspect) for every registered trainer."""

import importlib
import inspect

import pytest

from tfhash import registry, signatures


def _imported(path):
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _settings_by_inspect(cls):
    """{argument: default} along the MRO while `**kwargs` passes arguments on (Python's own view)."""
    found = {}
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tfhash") or "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters.values()
        for p in parameters:
            if p.name != "self" and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
                found.setdefault(p.name, signatures.REQUIRED if p.default is p.empty else p.default)
        if not any(p.kind == p.VAR_KEYWORD for p in parameters):
            break
    return found


@pytest.mark.parametrize("method", registry.names())
def test_the_source_reading_sees_what_python_sees(method):
    path = registry.get(method).trainer
    cls = _imported(path)
    read = signatures.settings(path)
    assert {k: v for k, (v, _) in read.items()} == _settings_by_inspect(cls)
    # The class order it walks is Python's method resolution order, less the classes outside tfhash.
    walked = [node.name for _, node in signatures._mro(*path.split(":"))]
    assert walked == [c.__name__ for c in cls.__mro__ if c.__module__.startswith("tfhash")]


def test_defaults_follow_constants_and_arithmetic_and_meanings_follow_pointers():
    dhn = signatures.settings("tfhash.models.dhn:DHN")
    # SMALL_CNN is a constant of tfhash.models.backbones, imported by name.
    assert dhn["backbone"][0] == "small_cnn"
    ssah = signatures.settings("tfhash.models.ssah:SSAH")
    assert ssah["decay"][0] == 10 ** -0.5  # written `10 ** (-0.5)`
    # BGAN documents bits as "as `BGANEncoder`": the encoder's entry is the meaning.
    bgan = signatures.settings("tfhash.models.bgan:BGAN")
    assert bgan["bits"][1] == signatures.settings("tfhash.models.bgan:BGANEncoder")["bits"][1] != ""
