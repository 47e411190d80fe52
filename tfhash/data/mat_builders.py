"""MIRFlickr-25K and NUS-WIDE from the usual cross-modal hashing `.mat` files.

Most deep cross-modal hashing papers (DCMH, SSAH and their many descendants)
train on `.mat` files that Jiang and Li released with DCMH, not on the raw
datasets. This module reads those files from a directory the user fills by
hand and exposes them as TFDS builders. Nothing is downloaded.

Importing this module registers two TFDS builders:

- `mirflickr25k_mat` (`Mirflickr25kMat`), one config `default`.
- `nus_wide_mat` (`NusWideMat`), configs `tc10` and `tc21`.

Both have features `image` (uint8 `(H, W, 3)`, 224 x 224 by default),
`bow` (the bag-of-words tag vector), `labels` (multi-hot uint8) and `index`
(the row in the files). All pairs go to one split, `train`, in file order:
TFDS reserves the split name `all` for the union of a builder's splits, so
`split="all"` and `split="train"` both read every pair. Retrieval splits are
drawn from `index` afterwards (see the protocol below).

File conventions
----------------
Each array is one MATLAB variable. Two file layouts are in use.

Split files, one variable per file (DCMH's Baidu-pan release: "I divided all
variables into some single files"). The files may sit directly in the
directory or in `IAll/`, `YAll/`, `LAll/` sub-folders, as in the
"Cleared-Set" archive many repositories point to:

| dataset        | images (key `IAll`)       | text (key `YAll`)         | labels (key `LAll`)       |
|----------------|---------------------------|---------------------------|---------------------------|
| MIRFlickr-25K  | `mirflickr25k-iall.mat`   | `mirflickr25k-yall.mat`   | `mirflickr25k-lall.mat`   |
| NUS-WIDE TC-10 | `nus-wide-tc10-iall.mat`  | `nus-wide-tc10-yall.mat`  | `nus-wide-tc10-lall.mat`  |
| NUS-WIDE TC-21 | `nus-wide-tc21-iall.mat`  | `nus-wide-tc21-yall.mat`  | `nus-wide-tc21-lall.mat`  |

Single file (MIRFlickr-25K only): `FLICKR-25K.mat` with `images` (some
copies name it `IAll`), `YAll` and `LAll`, as loaded by DCMH's MATLAB demo
(`load ./data/FLICKR-25K.mat YAll images LAll`), its TensorFlow port and
SSAH's `load_data.py`.

Dimensions: MIRFlickr-25K has 20,015 pairs, 1,386-d BoW, 24 labels;
NUS-WIDE TC-21 has 195,834 pairs, 1,000-d BoW, 21 labels; NUS-WIDE TC-10 has
1,000-d BoW and 10 labels (186,577 pairs in the copies cited in later papers).
The BoW and label widths are checked; the pair counts are not, so subsets
(for example with empty-tag rows removed) also load.

Either MATLAB format is accepted, file by file:

- v5 (`save -v7` and older) is read with `scipy.io.loadmat`; arrays keep
  MATLAB's shape, e.g. `YAll` is `(N, 1386)`. A v5 variable cannot exceed
  2 GB, so the full image arrays always come as v7.3.
- v7.3 is HDF5 and read with `h5py`. HDF5 stores MATLAB's column-major arrays
  with the axes reversed: `YAll` reads as `(1386, N)`, and the DCMH image
  array, MATLAB `(224, 224, 3, N)` (MatConvNet's H x W x C x N), reads as
  `(N, 3, 224, 224)`. Every HDF5 variable is reversed back to MATLAB order,
  which for the images is exactly DCMH's and SSAH's
  `file['images'][:].transpose(0, 3, 2, 1)`. HDF5 files written by h5py
  rather than MATLAB therefore read with their axes reversed too.

After that, images in NHWC `(N, H, W, 3)`, NCHW `(N, 3, H, W)` or MatConvNet
HWCN `(H, W, 3, N)` order are all normalised to NHWC uint8. The number of
pairs (from the labels) picks the order when the shape alone is ambiguous.

Sources read for these conventions (file names, keys and shapes):
jiangqy/DCMH-CVPR2017 (`DCMH_tensorflow/load_data.py`, `DCMH_demo.m`,
`readme.txt` for the TC-10 / TC-21 releases), lelan-li/SSAH (`load_data.py`,
`setting.py`), WendellGul/DCMH (`data_handler.py`, `main.py`), and public
loaders that open `nus-wide-tc21-iall.mat` with h5py and `*-yall.mat` /
`*-lall.mat` with scipy, commenting `(195834, 3, 224, 224)`,
`(195834, 1000)`, `(195834, 21)`.

Reproducing the MIRFlickr-25K protocol of DCMH / SSAH
----------------------------------------------------
The 20,015 pairs carry 24 labels and 1,386-d BoW. Draw 2,000 pairs at random
as queries; the other 18,015 are the retrieval set; 10,000 pairs sampled
from the retrieval set train the model. Two items are relevant when they
share at least one label, and the metric is mAP over the whole retrieval set
(mAP@all), reported for image->text and text->image at 16, 32 and 64 bits:

```python
images, texts, labels = read_cross_modal_mat(directory, "mirflickr25k")
perm = np.random.default_rng(seed).permutation(len(labels))
query, retrieval = perm[:2000], perm[2000:]
train = retrieval[:10000]
```

DCMH's demo draws `randperm` that way; SSAH permutes once and takes the
first 2,000 as queries; WendellGul/DCMH takes the first 2,000 rows in file
order. The papers use a different random draw each, so pin your seed. For
NUS-WIDE TC-21, DCMH uses 2,100 queries and 10,500 training pairs.
"""

import dataclasses
import os

import h5py
import numpy as np
import scipy.io
import scipy.sparse
import tensorflow_datasets as tfds

_MODALITIES = ("image", "text", "label")
# The sub-folder a split file may sit in, as in DCMH's "Cleared-Set" archive.
_SUBDIRS = {"image": "IAll", "text": "YAll", "label": "LAll"}
# Rows read per HDF5 access when generating examples: whole chunks stay
# decompressed once per block instead of once per example.
_BLOCK = 256


@dataclasses.dataclass(frozen=True)
class _Layout:
    """Where each modality lives: `{modality: (file name, accepted keys)}`."""

    description: str
    files: dict

    def file_names(self):
        return sorted({name for name, _ in self.files.values()})


@dataclasses.dataclass(frozen=True)
class _DatasetSpec:
    num_labels: int
    bow_dim: int
    layouts: tuple


def _split_layout(prefix):
    return _Layout(
        description=f"split files ({prefix}-iall/yall/lall.mat)",
        files={
            "image": (f"{prefix}-iall.mat", ("IAll",)),
            "text": (f"{prefix}-yall.mat", ("YAll",)),
            "label": (f"{prefix}-lall.mat", ("LAll",)),
        },
    )


DATASETS = {
    "mirflickr25k": _DatasetSpec(
        num_labels=24,
        bow_dim=1386,
        layouts=(
            _split_layout("mirflickr25k"),
            _Layout(
                description="single file (FLICKR-25K.mat)",
                files={
                    "image": ("FLICKR-25K.mat", ("images", "IAll")),
                    "text": ("FLICKR-25K.mat", ("YAll",)),
                    "label": ("FLICKR-25K.mat", ("LAll",)),
                },
            ),
        ),
    ),
    "nus_wide_tc10": _DatasetSpec(
        num_labels=10, bow_dim=1000, layouts=(_split_layout("nus-wide-tc10"),)
    ),
    "nus_wide_tc21": _DatasetSpec(
        num_labels=21, bow_dim=1000, layouts=(_split_layout("nus-wide-tc21"),)
    ),
}


class _MatVariable:
    """One MATLAB variable, indexed in MATLAB axis order, read lazily from HDF5."""

    def __init__(self, path, key, data):
        self.path = path
        self.key = key
        self._data = data
        self.hdf5 = isinstance(data, h5py.Dataset)
        # HDF5 holds MATLAB's column-major array with the axes reversed.
        self.shape = tuple(data.shape[::-1]) if self.hdf5 else tuple(data.shape)

    def take(self, axis, start, stop):
        """Returns `[start, stop)` along MATLAB `axis` as a dense numpy array."""
        ndim = len(self.shape)
        if self.hdf5:
            index = [slice(None)] * ndim
            index[ndim - 1 - axis] = slice(start, stop)
            return np.transpose(self._data[tuple(index)])
        if scipy.sparse.issparse(self._data):
            # v5 files may hold BoW as a MATLAB sparse matrix: densify by rows.
            return self._data.tocsr()[start:stop].toarray()
        index = [slice(None)] * ndim
        index[axis] = slice(start, stop)
        return np.asarray(self._data[tuple(index)])


class _MatFiles:
    """Opens each `.mat` file once and hands out its variables."""

    def __init__(self):
        self._hdf5 = {}
        self._v5 = {}

    def keys(self, path):
        if h5py.is_hdf5(path):
            handle = self._hdf5.setdefault(path, h5py.File(path, "r"))
            # MATLAB's bookkeeping groups, not variables.
            return [k for k in handle.keys() if not k.startswith("#")]
        return [name for name, _, _ in scipy.io.whosmat(path)]

    def variable(self, path, key):
        if h5py.is_hdf5(path):
            data = self._hdf5.setdefault(path, h5py.File(path, "r"))[key]
            if not isinstance(data, h5py.Dataset):
                raise ValueError(
                    f"`{key}` in {path} is an HDF5 group (a MATLAB sparse "
                    "matrix, struct or cell), expected a full numeric array. "
                    f"Received: {type(data).__name__}. Save it with "
                    f"`{key} = full({key})` in MATLAB."
                )
            return _MatVariable(path, key, data)
        if path not in self._v5:
            self._v5[path] = {}
        if key not in self._v5[path]:
            self._v5[path][key] = scipy.io.loadmat(path, variable_names=[key])[key]
        return _MatVariable(path, key, self._v5[path][key])

    def close(self):
        for handle in self._hdf5.values():
            handle.close()
        self._hdf5.clear()
        self._v5.clear()


def _find_layout(directory, dataset, spec):
    """Returns `(layout, {modality: path})` for the first complete layout."""
    missing = []
    for layout in spec.layouts:
        paths = {}
        for modality, (name, _) in layout.files.items():
            candidates = [
                os.path.join(directory, name),
                os.path.join(directory, _SUBDIRS[modality], name),
            ]
            found = [p for p in candidates if os.path.isfile(p)]
            if found:
                paths[modality] = found[0]
        if len(paths) == len(_MODALITIES):
            return layout, paths
        names = {layout.files[m][0] for m in _MODALITIES if m not in paths}
        missing.append(f"{layout.description} lacks {', '.join(sorted(names))}")
    expected = "; or ".join(
        f"{layout.description}: {', '.join(layout.file_names())}"
        for layout in spec.layouts
    )
    present = sorted(os.listdir(directory)) if os.path.isdir(directory) else None
    raise FileNotFoundError(
        f"No complete set of `{dataset}` .mat files in {directory!r}; expected "
        f"{expected} (split files may also sit in IAll/, YAll/, LAll/ "
        f"sub-folders). Received: "
        + (
            f"{'; '.join(missing)}; directory listing {present}"
            if present is not None
            else "no such directory"
        )
    )


def _image_order(shape, num_pairs):
    """Returns `(batch_axis, permutation to NHWC)` for a MATLAB-order shape."""
    if len(shape) != 4:
        raise ValueError(
            "Images: expected a 4-D array in NHWC (N, H, W, 3), NCHW "
            f"(N, 3, H, W) or HWCN (H, W, 3, N) order. Received: shape {shape}"
        )
    candidates = []
    if shape[3] == 3:
        candidates.append((0, (0, 1, 2, 3)))
    if shape[1] == 3:
        candidates.append((0, (0, 2, 3, 1)))
    if shape[2] == 3:
        candidates.append((3, (3, 0, 1, 2)))
    if not candidates:
        raise ValueError(
            "Images: expected 3 colour channels in NHWC (N, H, W, 3), NCHW "
            f"(N, 3, H, W) or HWCN (H, W, 3, N) order. Received: shape {shape}"
        )
    matching = [c for c in candidates if shape[c[0]] == num_pairs]
    return (matching or candidates)[0]


def _to_uint8(block, what, path):
    """Casts a block to uint8, refusing values a cast would change."""
    if block.dtype == np.uint8:
        return block
    if block.dtype == bool:
        return block.astype(np.uint8)
    if block.size and (
        block.min() < 0 or block.max() > 255 or np.any(block != np.round(block))
    ):
        raise ValueError(
            f"{what} in {path}: expected integers in [0, 255]. Received: "
            f"dtype {block.dtype}, range [{block.min()}, {block.max()}]"
        )
    return block.astype(np.uint8)


def _check_multi_hot(block, path):
    if block.size and not np.all((block == 0) | (block == 1)):
        values = np.unique(block)[:10]
        raise ValueError(
            f"Labels in {path}: expected a multi-hot 0/1 matrix. Received: "
            f"values {values.tolist()}"
        )
    return block.astype(np.uint8)


class _CrossModalSource:
    """The three arrays of one dataset, validated, read block by block."""

    def __init__(self, directory, dataset):
        directory = os.fspath(directory)
        if dataset not in DATASETS:
            raise ValueError(
                f"`dataset` must be one of {sorted(DATASETS)}. Received: "
                f"dataset={dataset!r}"
            )
        spec = DATASETS[dataset]
        layout, paths = _find_layout(directory, dataset, spec)
        self._files = _MatFiles()
        try:
            self._open(layout, paths, spec)
        except BaseException:
            self._files.close()
            raise

    def _open(self, layout, paths, spec):
        variables = {}
        for modality, (_, accepted) in layout.files.items():
            path = paths[modality]
            found = self._files.keys(path)
            key = next((k for k in accepted if k in found), None)
            if key is None:
                raise ValueError(
                    f"{os.path.basename(path)} ({path}): expected variable "
                    f"{' or '.join(repr(k) for k in accepted)} for the "
                    f"{modality}s. Received: variables {sorted(found)}"
                )
            variables[modality] = self._files.variable(path, key)
        self.texts_var = variables["text"]
        self.labels_var = variables["label"]
        self.images_var = variables["image"]

        for name, var, width in (
            ("Text (BoW)", self.texts_var, spec.bow_dim),
            ("Labels", self.labels_var, spec.num_labels),
        ):
            if len(var.shape) != 2 or var.shape[1] != width:
                raise ValueError(
                    f"{name} `{var.key}` in {var.path}: expected shape "
                    f"(num_pairs, {width}). Received: shape {var.shape}"
                )
        self.num_examples = self.labels_var.shape[0]
        self._image_axis, self._image_perm = _image_order(
            self.images_var.shape, self.num_examples
        )
        counts = {
            "images": self.images_var.shape[self._image_axis],
            "texts": self.texts_var.shape[0],
            "labels": self.num_examples,
        }
        if len(set(counts.values())) != 1:
            detail = ", ".join(
                f"{m} {n} (`{v.key}` in {os.path.basename(v.path)})"
                for (m, n), v in zip(
                    counts.items(), (self.images_var, self.texts_var, self.labels_var)
                )
            )
            raise ValueError(
                f"Expected the same number of pairs in every modality. Received: "
                f"{detail}"
            )
        nhwc = tuple(self.images_var.shape[i] for i in self._image_perm)
        self.image_shape = nhwc[1:]

    def images(self, start, stop):
        block = self.images_var.take(self._image_axis, start, stop)
        block = np.transpose(block, self._image_perm)
        return np.ascontiguousarray(_to_uint8(block, "Images", self.images_var.path))

    def texts(self, start, stop):
        return self.texts_var.take(0, start, stop).astype(np.float32)

    def labels(self, start, stop):
        return _check_multi_hot(
            self.labels_var.take(0, start, stop), self.labels_var.path
        )

    def close(self):
        self._files.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_cross_modal_mat(directory, dataset):
    """Reads a cross-modal hashing dataset from its `.mat` files.

    See the module docstring for the accepted file names, variable keys and
    array orders. This loads everything into memory (about 3 GB of images for
    MIRFlickr-25K, 29 GB for NUS-WIDE TC-21); the TFDS builders instead read
    the HDF5 arrays block by block.

    Args:
        directory: folder holding the `.mat` files (split files may also sit
            in its `IAll/`, `YAll/`, `LAll/` sub-folders).
        dataset: `"mirflickr25k"`, `"nus_wide_tc10"` or `"nus_wide_tc21"`.

    Returns:
        `(images, texts, labels)`: uint8 `(N, H, W, 3)` images, float32
        `(N, bow_dim)` BoW vectors and uint8 `(N, num_labels)` multi-hot
        labels, rows in file order.

    Raises:
        FileNotFoundError: no complete set of files in `directory`.
        ValueError: a variable is missing, the modalities disagree on the
            number of pairs, or an array has the wrong shape or values.
    """
    with _CrossModalSource(directory, dataset) as source:
        n = source.num_examples
        return source.images(0, n), source.texts(0, n), source.labels(0, n)


def _need_directory(data_dir, dataset):
    if data_dir is None:
        raise ValueError(
            f"The {dataset} protocol reads DCMH's .mat files from a folder you fill by hand: "
            "pass data_dir (see tfhash.data.mat_builders). Received: data_dir=None"
        )
    return data_dir


def load_mirflickr25k(data_dir=None):
    """MIRFlickr-25K image-text pairs (the `mirflickr25k` protocol): `(images, texts, labels)`."""
    return read_cross_modal_mat(_need_directory(data_dir, "mirflickr25k"), "mirflickr25k")


def load_nus_wide_21_images(data_dir=None):
    """NUS-WIDE TC-21 images and labels (the `nus_wide_21` image protocol): `(images, labels)`."""
    images, _, labels = read_cross_modal_mat(_need_directory(data_dir, "nus_wide_21"), "nus_wide_tc21")
    return images, labels


@dataclasses.dataclass(eq=False)
class MatBuilderConfig(tfds.core.BuilderConfig):
    """Config of the `.mat` builders.

    Args:
        dataset: key of `DATASETS`: `"mirflickr25k"`, `"nus_wide_tc10"` or
            `"nus_wide_tc21"`.
        image_size: `(height, width)` of the stored images; generation fails
            with a clear error when the files hold another size. Give a config
            with its own `name` for files that are not 224 x 224.
        bow_dtype: `"uint8"` (the released BoW vectors are 0/1 tag indicators;
            a quarter of the space) or `"float32"` for real-valued text
            features.
    """

    dataset: str = "mirflickr25k"
    image_size: tuple = (224, 224)
    bow_dtype: str = "uint8"


_INSTRUCTIONS = """\
Put the cross-modal hashing .mat files released with DCMH
(https://github.com/jiangqy/DCMH-CVPR2017, see its readme for the links) in the
manual directory, either directly or in IAll/, YAll/, LAll/ sub-folders:
{files}
Pass the folder as
`download_config=tfds.download.DownloadConfig(manual_dir=...)`.
"""


class _MatBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared code of the `.mat` builders; the subclasses set configs."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Read from the DCMH-style .mat files."}

    def _info(self):
        config = self.builder_config
        spec = DATASETS[config.dataset]
        if config.bow_dtype not in ("uint8", "float32"):
            raise ValueError(
                "`bow_dtype` must be 'uint8' or 'float32'. Received: "
                f"bow_dtype={config.bow_dtype!r}"
            )
        height, width = config.image_size
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    # PNG is lossless, so the pixels round-trip exactly.
                    "image": tfds.features.Image(
                        shape=(height, width, 3), encoding_format="png"
                    ),
                    "bow": tfds.features.Tensor(
                        shape=(spec.bow_dim,), dtype=np.dtype(config.bow_dtype)
                    ),
                    "labels": tfds.features.Tensor(
                        shape=(spec.num_labels,), dtype=np.uint8
                    ),
                    "index": tfds.features.Scalar(dtype=np.int64),
                }
            ),
            homepage="https://github.com/jiangqy/DCMH-CVPR2017",
        )

    def _split_generators(self, dl_manager):
        # "all" is reserved by TFDS (the union of splits), so the one split is
        # "train"; split="all" still reads everything.
        return {"train": self._generate_examples(os.fspath(dl_manager.manual_dir))}

    def _generate_examples(self, directory):
        config = self.builder_config
        with _CrossModalSource(directory, config.dataset) as source:
            expected = tuple(config.image_size) + (3,)
            if tuple(source.image_shape) != expected:
                raise ValueError(
                    f"Builder config {config.name!r} expects {expected} images. "
                    f"Received: {tuple(source.image_shape)} in "
                    f"{source.images_var.path}. Use a MatBuilderConfig with "
                    f"image_size={tuple(source.image_shape[:2])} and a new name."
                )
            for start in range(0, source.num_examples, _BLOCK):
                stop = min(start + _BLOCK, source.num_examples)
                images = source.images(start, stop)
                texts = source.texts(start, stop)
                if config.bow_dtype == "uint8":
                    texts = _to_uint8(texts, "Text (BoW)", source.texts_var.path)
                labels = source.labels(start, stop)
                for offset in range(stop - start):
                    index = start + offset
                    yield index, {
                        "image": images[offset],
                        "bow": texts[offset],
                        "labels": labels[offset],
                        "index": index,
                    }


def _instructions(*datasets):
    files = "\n".join(
        f"  {layout.description}: {', '.join(layout.file_names())}"
        for dataset in datasets
        for layout in DATASETS[dataset].layouts
    )
    return _INSTRUCTIONS.format(files=files)


class Mirflickr25kMat(_MatBuilder):
    """MIRFlickr-25K (20,015 pairs, 1,386-d BoW, 24 labels) from `.mat` files."""

    name = "mirflickr25k_mat"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("mirflickr25k")
    BUILDER_CONFIGS = [
        MatBuilderConfig(
            name="default",
            description="DCMH's 20,015 pairs, 224 x 224 images.",
            dataset="mirflickr25k",
        )
    ]


class NusWideMat(_MatBuilder):
    """NUS-WIDE (1,000-d BoW) from `.mat` files, top-10 or top-21 concepts."""

    name = "nus_wide_mat"
    MANUAL_DOWNLOAD_INSTRUCTIONS = _instructions("nus_wide_tc10", "nus_wide_tc21")
    BUILDER_CONFIGS = [
        MatBuilderConfig(
            name="tc10",
            description="10 most frequent concepts (nus-wide-tc10-*.mat).",
            dataset="nus_wide_tc10",
        ),
        MatBuilderConfig(
            name="tc21",
            description="21 most frequent concepts, 195,834 pairs (nus-wide-tc21-*.mat).",
            dataset="nus_wide_tc21",
        ),
    ]
