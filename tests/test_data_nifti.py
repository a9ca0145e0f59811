"""NIfTI reading/writing: round trip, determinism, and errors that name the file."""

from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from mmhvae.data.nifti import NiftiError, read_labels, read_volume, write_labels, write_volume

AFFINE = np.array([[-1.5, 0, 0, 90], [0, 1.5, 0, -100], [0, 0, 2.5, -60], [0, 0, 0, 1]], dtype=float)


def test_round_trip_float32_and_affine(tmp_path):
    data = np.random.default_rng(0).normal(size=(7, 6, 5)).astype(np.float32)
    path = tmp_path / "a.nii.gz"
    write_volume(path, data, AFFINE)
    back, affine, header = read_volume(path)
    assert back.dtype == np.float32 and back.shape == (7, 6, 5)
    np.testing.assert_array_equal(back, data)
    np.testing.assert_allclose(affine, AFFINE)
    assert header.get_data_dtype() == np.float32


def test_writes_are_deterministic_and_reuse_a_header(tmp_path):
    data = np.arange(60, dtype=np.float32).reshape(5, 4, 3)
    write_volume(tmp_path / "a.nii.gz", data, AFFINE)
    write_volume(tmp_path / "b.nii.gz", data, AFFINE)
    assert (tmp_path / "a.nii.gz").read_bytes() == (tmp_path / "b.nii.gz").read_bytes()
    # Inference writes with the input's header: geometry and description carry over, dtype becomes float32.
    source = nib.Nifti1Image(data.astype(np.int16), AFFINE)
    source.header["descrip"] = b"scanner X"
    write_volume(tmp_path / "c.nii", data * 0.5, AFFINE, header=source.header)
    image = nib.load(tmp_path / "c.nii")
    assert image.get_data_dtype() == np.float32
    assert image.header["descrip"].tobytes().startswith(b"scanner X")
    np.testing.assert_array_equal(image.get_fdata(dtype=np.float32), data * 0.5)


def test_integer_outputs(tmp_path):
    write_volume(tmp_path / "i.nii.gz", np.full((3, 3, 3), 7.2), AFFINE, dtype=np.int16)
    assert nib.load(tmp_path / "i.nii.gz").get_data_dtype() == np.int16
    with pytest.raises(NiftiError, match="do not fit"):
        write_volume(tmp_path / "j.nii.gz", np.full((3, 3, 3), 1e6), AFFINE, dtype=np.int16)
    write_labels(tmp_path / "seg.nii.gz", np.eye(3, dtype=np.int64)[:, :, None].repeat(2, 2) * 3, AFFINE)
    labels, _, _ = read_labels(tmp_path / "seg.nii.gz")
    assert labels.dtype == np.int16 and labels.max() == 3


def test_missing_file(tmp_path):
    with pytest.raises(NiftiError, match=r"nope\.nii\.gz: file not found"):
        read_volume(tmp_path / "nope.nii.gz")


def test_corrupt_and_truncated_files(tmp_path):
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"this is not a nifti file at all" * 20)
    with pytest.raises(NiftiError, match=r"junk\.nii\.gz: not a readable NIfTI"):
        read_volume(junk)
    good = tmp_path / "good.nii.gz"
    write_volume(good, np.random.default_rng(1).normal(size=(20, 20, 20)), AFFINE)
    raw = gzip.decompress(good.read_bytes())
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(gzip.compress(raw[: len(raw) // 2]))  # valid header, half the voxels
    with pytest.raises(NiftiError, match=r"cut\.nii\.gz"):
        read_volume(cut)


def test_4d_and_nonfinite(tmp_path):
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.float32), AFFINE), tmp_path / "series.nii.gz")
    with pytest.raises(NiftiError, match=r"series\.nii\.gz: image is 4D .* expected a 3D volume"):
        read_volume(tmp_path / "series.nii.gz")
    # A trailing singleton dimension is a 3D volume.
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4, 1), np.float32), AFFINE), tmp_path / "single.nii.gz")
    assert read_volume(tmp_path / "single.nii.gz")[0].shape == (4, 4, 4)
    data = np.ones((4, 4, 4), np.float32)
    data[1, 2, 3] = np.nan
    data[0, 0, 0] = np.inf
    nib.save(nib.Nifti1Image(data, AFFINE), tmp_path / "nan.nii.gz")
    with pytest.raises(NiftiError, match=r"nan\.nii\.gz: 2 non-finite voxels"):
        read_volume(tmp_path / "nan.nii.gz")
