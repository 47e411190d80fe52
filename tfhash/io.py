"""Atomic writes of the small JSON records the library persists (run records,
scores, the zoo manifest, the vocabulary): a reader never sees half a file."""

import json
import os


def write_json(obj, path, **options):
    """Writes `obj` as JSON (indent 2 unless `options` say otherwise, final newline)
    to a temporary file beside `path`, then renames it into place."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, **{"indent": 2, **options})
        f.write("\n")
    os.replace(tmp, path)
