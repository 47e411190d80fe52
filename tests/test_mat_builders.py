"""The `.mat` readers and TFDS builders, on tiny fake files in the real layouts."""

import os

import h5py
import numpy as np
import pytest
import scipy.io
import scipy.sparse
import tensorflow_datasets as tfds

from tfhash.data import mat_builders
from tfhash.data.mat_builders import (
    MatBuilderConfig,
    Mirflickr25kMat,
    NusWideMat,
    read_cross_modal_mat,
)

N, H, W = 5, 4, 6  # Non-square, so a swapped height and width would show.
DIMS = {"mirflickr25k": (1386, 24), "nus_wide_tc10": (1000, 10), "nus_wide_tc21": (1000, 21)}
PREFIX = {
    "mirflickr25k": "mirflickr25k",
    "nus_wide_tc10": "nus-wide-tc10",
    "nus_wide_tc21": "nus-wide-tc21",
}
# Reference NHWC images -> the MATLAB-order array a file would hold.
TO_MATLAB = {
    "nhwc": lambda x: x,
    "nchw": lambda x: x.transpose(0, 3, 1, 2),
    "hwcn": lambda x: x.transpose(1, 2, 3, 0),  # MatConvNet, as DCMH saves it.
}


def _arrays(dataset, n=N, h=H, w=W, seed=0):
    rng = np.random.default_rng(seed)
    bow_dim, num_labels = DIMS[dataset]
    images = rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)
    texts = rng.integers(0, 2, size=(n, bow_dim)).astype(np.float64)  # MATLAB double.
    labels = rng.integers(0, 2, size=(n, num_labels)).astype(np.float64)
    return images, texts, labels


def _save_v5(path, **variables):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    scipy.io.savemat(path, variables)


def _save_v73(path, **variables):
    """Writes a MATLAB v7.3 file: HDF5 behind a 512-byte MATLAB header, axes reversed."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with h5py.File(path, "w", userblock_size=512) as f:
        for key, value in variables.items():
            dataset = f.create_dataset(key, data=np.transpose(value))
            dataset.attrs["MATLAB_class"] = np.bytes_(
                "uint8" if value.dtype == np.uint8 else "double"
            )
    with open(path, "r+b") as f:
        f.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: fake HDF5 schema 1.00 .")


def _write_split(directory, dataset, images, texts, labels, image_order="hwcn",
                 image_fmt="v73", text_fmt="v5", label_fmt="v5", subdirs=False):
    prefix = PREFIX[dataset]
    save = {"v5": _save_v5, "v73": _save_v73}
    parts = (("IAll", "iall", image_fmt, TO_MATLAB[image_order](images)),
             ("YAll", "yall", text_fmt, texts), ("LAll", "lall", label_fmt, labels))
    for key, suffix, fmt, value in parts:
        folder = os.path.join(directory, key) if subdirs else directory
        save[fmt](os.path.join(folder, f"{prefix}-{suffix}.mat"), **{key: value})


def _assert_same(result, images, texts, labels):
    got_images, got_texts, got_labels = result
    assert got_images.dtype == np.uint8 and got_images.shape == images.shape
    np.testing.assert_array_equal(got_images, images)
    assert got_texts.dtype == np.float32
    np.testing.assert_array_equal(got_texts, texts)
    assert got_labels.dtype == np.uint8
    np.testing.assert_array_equal(got_labels, labels)


# --- Reader: every supported layout gives the arrays back. ---


@pytest.mark.parametrize("image_order", ["nhwc", "nchw", "hwcn"])
@pytest.mark.parametrize("image_fmt", ["v5", "v73"])
def test_split_files_any_image_order(tmp_path, image_order, image_fmt):
    arrays = _arrays("mirflickr25k")
    _write_split(str(tmp_path), "mirflickr25k", *arrays, image_order=image_order,
                 image_fmt=image_fmt)
    _assert_same(read_cross_modal_mat(tmp_path, "mirflickr25k"), *arrays)


def test_dcmh_hdf5_images_match_dcmh_loader(tmp_path):
    # DCMH/SSAH read the v7.3 image array as `f[key][:].transpose(0, 3, 2, 1)`.
    arrays = _arrays("mirflickr25k")
    _write_split(str(tmp_path), "mirflickr25k", *arrays)
    with h5py.File(tmp_path / "mirflickr25k-iall.mat", "r") as f:
        assert f["IAll"].shape == (N, 3, W, H)
        dcmh = f["IAll"][:].transpose(0, 3, 2, 1)
    np.testing.assert_array_equal(read_cross_modal_mat(tmp_path, "mirflickr25k")[0], dcmh)


def test_split_files_in_cleared_set_subfolders(tmp_path):
    arrays = _arrays("mirflickr25k")
    _write_split(str(tmp_path), "mirflickr25k", *arrays, subdirs=True)
    _assert_same(read_cross_modal_mat(tmp_path, "mirflickr25k"), *arrays)


def test_single_file_v73(tmp_path):
    images, texts, labels = _arrays("mirflickr25k")
    _save_v73(str(tmp_path / "FLICKR-25K.mat"), images=TO_MATLAB["hwcn"](images),
              YAll=texts, LAll=labels)
    _assert_same(read_cross_modal_mat(tmp_path, "mirflickr25k"), images, texts, labels)


def test_single_file_v5_iall_key_double_images_sparse_bow(tmp_path):
    images, texts, labels = _arrays("mirflickr25k")
    _save_v5(str(tmp_path / "FLICKR-25K.mat"), IAll=images.astype(np.float64),
             YAll=scipy.sparse.csc_matrix(texts), LAll=labels)
    _assert_same(read_cross_modal_mat(tmp_path, "mirflickr25k"), images, texts, labels)


@pytest.mark.parametrize("dataset", ["nus_wide_tc10", "nus_wide_tc21"])
def test_nus_wide_split_files(tmp_path, dataset):
    arrays = _arrays(dataset)
    # Some TC-10 copies hold YAll as v7.3 too.
    _write_split(str(tmp_path), dataset, *arrays, text_fmt="v73")
    _assert_same(read_cross_modal_mat(tmp_path, dataset), *arrays)


# --- Reader: errors. ---


def test_missing_files_lists_expected_names_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError) as info:
        read_cross_modal_mat(tmp_path, "mirflickr25k")
    message = str(info.value)
    for name in ("mirflickr25k-iall.mat", "mirflickr25k-yall.mat",
                 "mirflickr25k-lall.mat", "FLICKR-25K.mat", str(tmp_path)):
        assert name in message


def test_partly_missing_files_name_the_missing_one(tmp_path):
    _write_split(str(tmp_path), "nus_wide_tc21", *_arrays("nus_wide_tc21"))
    os.remove(tmp_path / "nus-wide-tc21-lall.mat")
    with pytest.raises(FileNotFoundError, match="lacks nus-wide-tc21-lall.mat"):
        read_cross_modal_mat(tmp_path, "nus_wide_tc21")


@pytest.mark.parametrize("fmt", ["v5", "v73"])
def test_missing_key_lists_keys_found(tmp_path, fmt):
    images, texts, labels = _arrays("mirflickr25k")
    _write_split(str(tmp_path), "mirflickr25k", images, texts, labels, label_fmt=fmt)
    os.remove(tmp_path / "mirflickr25k-lall.mat")
    {"v5": _save_v5, "v73": _save_v73}[fmt](str(tmp_path / "mirflickr25k-lall.mat"), L=labels)
    with pytest.raises(ValueError, match=r"expected variable 'LAll'.*Received: variables \['L'\]"):
        read_cross_modal_mat(tmp_path, "mirflickr25k")


def test_inconsistent_counts_state_each(tmp_path):
    images, texts, labels = _arrays("mirflickr25k")
    _write_split(str(tmp_path), "mirflickr25k", images, texts[:-1], labels)
    with pytest.raises(ValueError) as info:
        read_cross_modal_mat(tmp_path, "mirflickr25k")
    message = str(info.value)
    assert "same number of pairs" in message
    assert f"images {N}" in message and f"texts {N - 1}" in message and f"labels {N}" in message


@pytest.mark.parametrize(
    "change, pattern",
    [
        (lambda i, t, l: (i, t[:, :1000], l), r"expected shape \(num_pairs, 1386\).*\(5, 1000\)"),
        (lambda i, t, l: (i, t, l[:, :23]), r"expected shape \(num_pairs, 24\).*\(5, 23\)"),
        (lambda i, t, l: (i[..., 0], t, l), r"expected a 4-D array.*\(5, 4, 6\)"),
        (lambda i, t, l: (np.concatenate([i, i[..., :1]], -1), t, l), "expected 3 colour channels"),
        (lambda i, t, l: (i, t, l * 2), "expected a multi-hot 0/1 matrix"),
        (lambda i, t, l: (i.astype(np.float64) - 300, t, l), r"expected integers in \[0, 255\]"),
    ],
    ids=["bow_dim", "label_dim", "grey_images", "four_channels", "labels_not_01", "pixel_range"],
)
def test_wrong_dims_and_values(tmp_path, change, pattern):
    images, texts, labels = change(*_arrays("mirflickr25k"))
    directory = str(tmp_path)
    _save_v5(os.path.join(directory, "mirflickr25k-iall.mat"), IAll=images)
    _save_v5(os.path.join(directory, "mirflickr25k-yall.mat"), YAll=texts)
    _save_v5(os.path.join(directory, "mirflickr25k-lall.mat"), LAll=labels)
    with pytest.raises(ValueError, match=pattern):
        read_cross_modal_mat(directory, "mirflickr25k")


def test_unknown_dataset(tmp_path):
    with pytest.raises(ValueError, match=r"must be one of .*Received: dataset='coco'"):
        read_cross_modal_mat(tmp_path, "coco")


# --- TFDS builders. ---


def _build(builder_cls, config, manual_dir, data_dir):
    builder = builder_cls(config=config, data_dir=str(data_dir))
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    return builder


def _read_back(builder):
    examples = list(tfds.as_numpy(builder.as_dataset(split="all", shuffle_files=False)))
    examples.sort(key=lambda e: e["index"])
    return examples


def _assert_examples(examples, images, texts, labels):
    assert [int(e["index"]) for e in examples] == list(range(len(images)))
    np.testing.assert_array_equal(np.stack([e["image"] for e in examples]), images)
    np.testing.assert_array_equal(np.stack([e["bow"] for e in examples]), texts)
    np.testing.assert_array_equal(np.stack([e["labels"] for e in examples]), labels)


def test_mirflickr_builder_default_config_224(tmp_path):
    arrays = _arrays("mirflickr25k", n=2, h=224, w=224)
    _write_split(str(tmp_path / "manual"), "mirflickr25k", *arrays)
    builder = _build(Mirflickr25kMat, None, tmp_path / "manual", tmp_path / "data")
    assert builder.name == "mirflickr25k_mat"
    assert builder.info.features["image"].shape == (224, 224, 3)
    assert builder.info.features["bow"].dtype == np.uint8
    assert list(builder.info.splits) == ["train"]
    assert builder.info.splits["train"].num_examples == 2
    _assert_examples(_read_back(builder), *arrays)


def test_mirflickr_builder_single_file_custom_size_float_bow(tmp_path):
    images, texts, labels = _arrays("mirflickr25k")
    texts = texts * 0.5  # Real-valued text features need bow_dtype float32.
    _save_v73(str(tmp_path / "manual" / "FLICKR-25K.mat"),
              images=TO_MATLAB["hwcn"](images), YAll=texts, LAll=labels)
    config = MatBuilderConfig(name="tiny_float", dataset="mirflickr25k",
                              image_size=(H, W), bow_dtype="float32")
    builder = _build(Mirflickr25kMat, config, tmp_path / "manual", tmp_path / "data")
    _assert_examples(_read_back(builder), images, texts, labels)


@pytest.mark.parametrize("dataset, name", [("nus_wide_tc10", "tc10"), ("nus_wide_tc21", "tc21")])
def test_nus_wide_builder(tmp_path, dataset, name):
    assert NusWideMat.builder_configs[name].dataset == dataset
    arrays = _arrays(dataset, n=N + 1)
    _write_split(str(tmp_path / "manual"), dataset, *arrays, subdirs=True)
    config = MatBuilderConfig(name=f"{name}_tiny", dataset=dataset, image_size=(H, W))
    builder = _build(NusWideMat, config, tmp_path / "manual", tmp_path / "data")
    assert builder.info.features["labels"].shape == (DIMS[dataset][1],)
    _assert_examples(_read_back(builder), *arrays)


def test_builder_image_size_mismatch(tmp_path):
    _write_split(str(tmp_path / "manual"), "mirflickr25k", *_arrays("mirflickr25k"))
    with pytest.raises(ValueError, match=r"image_size=\(4, 6\)"):
        _build(Mirflickr25kMat, None, tmp_path / "manual", tmp_path / "data")


def test_builder_uint8_bow_refuses_real_values(tmp_path):
    images, texts, labels = _arrays("mirflickr25k", n=2, h=224, w=224)
    _write_split(str(tmp_path / "manual"), "mirflickr25k", images, texts * 0.5, labels)
    with pytest.raises(ValueError, match=r"Text \(BoW\).*expected integers"):
        _build(Mirflickr25kMat, None, tmp_path / "manual", tmp_path / "data")


def test_mock_data(tmp_path):
    with tfds.testing.mock_data(num_examples=3, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = tfds.load("nus_wide_mat/tc21", split="all", data_dir=str(tmp_path))
        examples = list(tfds.as_numpy(ds))
    assert len(examples) == 3
    assert examples[0]["image"].shape == (224, 224, 3)
    assert examples[0]["bow"].shape == (1000,) and examples[0]["labels"].shape == (21,)


def test_manual_instructions_name_the_files():
    assert "mirflickr25k-iall.mat" in Mirflickr25kMat.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert "FLICKR-25K.mat" in Mirflickr25kMat.MANUAL_DOWNLOAD_INSTRUCTIONS
    for prefix in ("nus-wide-tc10", "nus-wide-tc21"):
        assert f"{prefix}-lall.mat" in NusWideMat.MANUAL_DOWNLOAD_INSTRUCTIONS
    assert set(mat_builders.DATASETS) == set(DIMS)


def test_bad_bow_dtype():
    config = MatBuilderConfig(name="bad", dataset="mirflickr25k", bow_dtype="int32")
    with pytest.raises(ValueError, match="Received: bow_dtype='int32'"):
        Mirflickr25kMat(config=config, data_dir="/nonexistent")
