"""A tfhash class's constructor settings, read from its source without importing it.

`tfhash methods NAME` lists a trainer's settings, their defaults and one-line
meanings; the trainers are Keras models, and importing one loads TensorFlow.
So the registry reads them here, with `ast`, from the same source Python runs:

- the settings are the `__init__` arguments of the class and of every class
  its `**kwargs` reach along the method resolution order (C3, as Python
  computes it), so a family's shared arguments (the trunk's) are declared once;
- a default is a literal, a module-level constant (followed through
  `from ... import NAME`), or arithmetic on numbers (`10 ** -0.5`);
- a meaning is the argument's entry in the `Args:` section, on one line,
  of the first class (in that order) that documents it (`a, b: text` documents
  both; "as `OtherClass`" defers to the class named).

Only classes inside the `tfhash` package are read; a base from elsewhere
(`keras.Model`) ends the walk. Stdlib only.
"""

import ast
import functools
import operator
import os
import re

_PACKAGE = os.path.dirname(os.path.abspath(__file__))
_OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
              ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


@functools.lru_cache(maxsize=None)
def _module(name):
    """(ast.Module, {imported name: (module, attribute)}) of a tfhash module, or None elsewhere."""
    if name != "tfhash" and not name.startswith("tfhash."):
        return None
    parts = name.split(".")[1:]
    path = os.path.join(_PACKAGE, *parts) + ".py"
    if not os.path.isfile(path):
        path = os.path.join(_PACKAGE, *parts, "__init__.py")
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    imports = {}
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imports[alias.asname or alias.name] = (node.module, alias.name)
    return tree, imports


def _lookup(module, name):
    """The module-level node `name` of `module` (a class or an assignment's value), following imports."""
    found = _module(module)
    if found is None:
        return None, None
    tree, imports = found
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return module, node
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return module, node.value
    if name in imports:
        return _lookup(*imports[name])
    return None, None


def _value(module, node):
    """A default's value: literal, a constant followed through imports, or arithmetic on those."""
    try:
        return ast.literal_eval(node)
    except ValueError:
        pass
    if isinstance(node, ast.Name):
        where, found = _lookup(module, node.id)
        if found is not None and not isinstance(found, ast.ClassDef):
            return _value(where, found)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(module, node.left), _value(module, node.right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_value(module, node.operand))
    raise ValueError(f"Expected a literal, a constant or arithmetic as a default. Received: {ast.unparse(node)} "
                     f"in {module}")


def _mro(module, name):
    """[(module, ClassDef)] of the tfhash classes in `module.name`'s method resolution order (C3)."""

    @functools.lru_cache(maxsize=None)
    def linear(where, cls):
        node = _lookup(where, cls)[1]
        bases = []
        for base in node.bases:
            if isinstance(base, ast.Name):
                found_module, found = _lookup(where, base.id)
                if isinstance(found, ast.ClassDef):
                    bases.append((found_module, found.name))
        sequences = [list(linear(*base)) for base in bases] + [list(bases)]
        result = [(where, cls)]
        while any(sequences):
            for sequence in sequences:
                head = sequence[0] if sequence else None
                if head and not any(head in other[1:] for other in sequences):
                    break
            else:
                raise TypeError(f"No consistent method resolution order for {where}.{cls}")
            result.append(head)
            sequences = [[c for c in sequence if c != head] for sequence in sequences]
        return tuple(result)

    return [(where, _lookup(where, cls)[1]) for where, cls in linear(module, name)]


def _documented(cls):
    """{argument: its entry, on one line} in the class docstring's `Args:` section."""
    doc = ast.get_docstring(cls) or ""
    entries, section = [], False
    for line in doc.splitlines():
        if re.match(r"^\S", line):
            section = line.strip() == "Args:"
            continue
        entry = re.match(r"^    (\w[\w, ]*):\s*(.*)$", line) if section else None
        if entry:
            entries.append((entry.group(1), [entry.group(2).strip()]))
        elif section and entries and line.startswith("        "):  # an entry's continuation line
            entries[-1][1].append(line.strip())
    meanings = {}
    for names, lines in entries:
        for name in names.split(","):
            meanings.setdefault(name.strip(), " ".join(lines))
    return meanings


def _meaning(module, argument, meaning, depth=0):
    """`meaning`, or, for a pointer "as `OtherClass`", what that class (or its bases) says."""
    pointer = re.fullmatch(r"as `(\w+)`\.?", meaning)
    if pointer is None or depth > 8:
        return meaning
    for where, cls in _mro(*_class_path(module, pointer.group(1))):
        found = _documented(cls).get(argument)
        if found:
            return _meaning(where, argument, found, depth + 1)
    return ""


def _class_path(module, name):
    where, node = _lookup(module, name)
    return where, node.name


def settings(path):
    """{argument: (default, meaning)} of `"module:Class"`'s constructor, in
    declaration order (the class's own first), read from source."""
    module, _, name = path.partition(":")
    found = {}
    classes = _mro(module, name)
    meanings = {}
    for where, cls in classes:  # the nearest class that documents an argument says what it means
        for argument, meaning in _documented(cls).items():
            meanings.setdefault(argument, _meaning(where, argument, meaning))
    for where, cls in classes:
        init = next((n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
        if init is None:
            continue
        arguments = init.args.posonlyargs + init.args.args
        defaults = [None] * (len(arguments) - len(init.args.defaults)) + init.args.defaults
        pairs = list(zip(arguments, defaults)) + list(zip(init.args.kwonlyargs, init.args.kw_defaults))
        for argument, default in pairs:
            if argument.arg == "self" or argument.arg in found:
                continue
            value = _value(where, default) if default is not None else REQUIRED
            found[argument.arg] = (value, meanings.get(argument.arg, ""))
        if init.args.kwarg is None:  # nothing passes on: the rest of the MRO takes no settings from here
            break
    return found


class _Required:
    """The default of an argument that has none."""

    def __repr__(self):
        return "<required>"


REQUIRED = _Required()
