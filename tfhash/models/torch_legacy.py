"""Reads PyTorch's legacy (pre-1.6, non-zip) `.pth` state dicts with NumPy alone.

The legacy format is four pickles and then raw data:

1. a magic number, 2. the format version (1001), 3. system info (byte order,
type sizes), 4. the state dict (an `OrderedDict` of tensors whose storages are
pickle persistent ids: `("storage", storage type, key, device, numel, view)`),
5. the list of storage keys, in the order their data follows; then, for each
key, an int64 element count and that many little-endian elements.

Unpickling can run any function a file names, so every pickle here is read by
an unpickler that resolves only `collections.OrderedDict`,
`torch._utils._rebuild_tensor_v2` and the `torch.*Storage` types, each to a
local stand-in, and refuses every other global before anything is called
(the rule of `torch.load(weights_only=True)`). torch is never imported.

    >>> state = read_state_dict("efficientnet-lite0-57934424.pth")
    >>> state["_fc.weight"].shape
    (1000, 1280)
"""

import collections
import io
import os
import pickle

import numpy as np

MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
PROTOCOL_VERSION = 1001

# torch.<Name>Storage -> element dtype (little-endian, as the legacy writer stores it).
_STORAGE_DTYPES = {
    "DoubleStorage": "<f8",
    "FloatStorage": "<f4",
    "HalfStorage": "<f2",
    "BFloat16Storage": "<u2",  # no NumPy bfloat16: the high half of a float32, widened on read
    "LongStorage": "<i8",
    "IntStorage": "<i4",
    "ShortStorage": "<i2",
    "CharStorage": "<i1",
    "ByteStorage": "<u1",
    "BoolStorage": "?",
}


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle named a global outside the allow-list (nothing of it was run)."""


class _StorageType:
    """Stand-in for a `torch.*Storage` class: only its element dtype. Not callable."""

    def __init__(self, name):
        self.name = name
        self.dtype = np.dtype(_STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class _Storage:
    """A storage whose data is read after the pickles: dtype, element count, then the array."""

    def __init__(self, storage_type, numel):
        self.storage_type = storage_type
        self.numel = int(numel)
        self.data = None


class _View:
    """A slice of a storage (persistent ids with view metadata)."""

    def __init__(self, root, offset, numel):
        self.root, self.offset, self.numel = root, int(offset), int(numel)


class _Tensor:
    """A tensor recorded by `_rebuild_tensor_v2`, materialized once the storages are read."""

    def __init__(self, storage, storage_offset, size, stride):
        self.storage, self.storage_offset = storage, int(storage_offset)
        self.size, self.stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)

    def to_numpy(self):
        storage, offset = self.storage, self.storage_offset
        if isinstance(storage, _View):
            storage, offset = storage.root, offset + storage.offset
        data = storage.data
        if data is None:
            raise pickle.UnpicklingError(f"A tensor's storage has no data in the file. Received: size={self.size}")
        count = int(np.prod(self.size))
        if count == 0:
            return np.zeros(self.size, data.dtype)
        # The last element a view reaches must lie inside the storage.
        last = offset + sum((n - 1) * s for n, s in zip(self.size, self.stride))
        if offset < 0 or min(self.stride, default=0) < 0 or last >= len(data):
            raise pickle.UnpicklingError(
                f"A tensor reaches outside its storage of {len(data)} elements. "
                f"Received: offset={offset}, size={self.size}, stride={self.stride}"
            )
        strides = tuple(s * data.itemsize for s in self.stride)
        return np.lib.stride_tricks.as_strided(data[offset:], self.size, strides, writeable=False).copy()


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None, metadata=None):
    """Stand-in for `torch._utils._rebuild_tensor_v2`: records the tensor, runs nothing."""
    if not isinstance(storage, (_Storage, _View)):
        raise pickle.UnpicklingError(f"_rebuild_tensor_v2 expects a storage. Received: {type(storage).__name__}")
    return _Tensor(storage, storage_offset, size, stride)


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the allow-listed globals, to local stand-ins; storages come
    from persistent ids."""

    def __init__(self, file, storages=None):
        super().__init__(file)
        self.storages = storages

    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafePickleError(
            f"Refused to load the global {module}.{name}: a weights file may only name "
            "collections.OrderedDict, torch._utils._rebuild_tensor_v2 and torch.*Storage types. "
            f"Received: {module}.{name}"
        )

    def persistent_load(self, saved_id):
        if self.storages is None or not isinstance(saved_id, tuple) or not saved_id or saved_id[0] != "storage":
            raise UnsafePickleError(
                f"Expected a persistent id ('storage', ...) inside the state dict. Received: {saved_id!r:.200}"
            )
        storage_type, key, _location, numel, view = saved_id[1:6]
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"Expected a torch.*Storage type. Received: {storage_type!r:.200}")
        root = self.storages.get(key)
        if root is None:
            root = self.storages[key] = _Storage(storage_type, numel)
        if view is not None:
            _view_key, offset, view_numel = view
            return _View(root, offset, view_numel)
        return root


def _load(f, storages=None):
    return _RestrictedUnpickler(f, storages).load()


def read_state_dict(path):
    """Reads a legacy `.pth` state dict: {name: np.ndarray}, in the file's order.

    Args:
        path: the `.pth` file (written by `torch.save` before PyTorch 1.6, or
            with `_use_new_zipfile_serialization=False`).

    Returns:
        A dict of NumPy arrays (writable copies), dtypes as stored
        (bfloat16 widened to float32).

    Raises:
        FileNotFoundError: no file at `path`.
        ValueError: not a legacy file (a zip-format `.pth`, a wrong magic
            number, truncated data).
        UnsafePickleError: the file names a global outside the allow-list.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Expected a legacy PyTorch .pth file. Received: path={path!r} (no such file)")
    with open(path, "rb") as f:
        raw = f.read()
    if raw[:4] == b"PK\x03\x04":
        raise ValueError(
            "Expected a legacy (pre-1.6, non-zip) PyTorch file; this is the zip format, "
            f"which this reader does not handle. Received: path={path!r}"
        )
    stream = io.BytesIO(raw)
    try:
        magic = _load(stream)
        version = _load(stream) if magic == MAGIC_NUMBER else None
        sys_info = _load(stream) if version == PROTOCOL_VERSION else None
        storages = {}
        state = _load(stream, storages) if sys_info is not None else None
        keys = _load(stream) if state is not None else None
    except UnsafePickleError:
        raise
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, KeyError, IndexError) as e:
        raise ValueError(f"Could not read the legacy PyTorch file {path!r}: {type(e).__name__}: {e}") from None
    if magic != MAGIC_NUMBER:
        raise ValueError(f"Expected the legacy PyTorch magic number. Received: {magic!r:.100} in {path!r}")
    if version != PROTOCOL_VERSION:
        raise ValueError(f"Expected legacy format version {PROTOCOL_VERSION}. Received: {version!r:.100}")
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ValueError(f"Expected a little-endian file. Received: sys_info={sys_info}")
    if not isinstance(state, dict) or not isinstance(keys, list):
        raise ValueError(
            f"Expected a state dict (a dict of tensors). Received: {type(state).__name__} in {path!r}"
        )
    offset = stream.tell()
    for key in keys:
        storage = storages.get(key)
        if storage is None:
            raise ValueError(f"The storage list names a storage no tensor uses. Received: key={key!r}")
        dtype = storage.storage_type.dtype
        if offset + 8 > len(raw):
            raise ValueError(f"The file {path!r} is truncated at storage {key!r}.")
        numel = int(np.frombuffer(raw, "<i8", 1, offset)[0])
        offset += 8
        if numel != storage.numel or offset + numel * dtype.itemsize > len(raw):
            raise ValueError(
                f"Storage {key!r} of {path!r} should hold {storage.numel} elements. "
                f"Received: {numel} elements, {len(raw) - offset} bytes left"
            )
        storage.data = np.frombuffer(raw, dtype, numel, offset)
        if storage.storage_type.name == "BFloat16Storage":
            storage.data = (storage.data.astype("<u4") << 16).view("<f4")
        offset += numel * dtype.itemsize
    out = {}
    for name, value in state.items():
        if not isinstance(value, _Tensor):
            raise ValueError(f"Expected a tensor for every entry of the state dict. Received: {name!r}: "
                             f"{type(value).__name__}")
        out[name] = value.to_numpy()
    return out
