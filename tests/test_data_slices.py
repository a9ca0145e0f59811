"""Volume <-> slices: exact round trip, untouched affine, foreground selection, field-of-view crop."""

from __future__ import annotations

import numpy as np
import pytest

from mmhvae.data.nifti import read_volume, write_volume
from mmhvae.data.slices import (
    SliceGeometry,
    crop_box_to_mask,
    foreground_slices,
    slices_to_volume,
    volume_to_slices,
)


@pytest.mark.parametrize("shape", [(20, 24, 10), (40, 30, 12), (33, 17, 9), (32, 32, 5)])
@pytest.mark.parametrize("axis", [0, 1, 2])
def test_round_trip_where_nothing_is_cropped(shape, axis):
    volume = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    size = 32
    slices, geometry = volume_to_slices(volume, axis, size)
    assert slices.shape == (shape[axis], size, size) and slices.dtype == np.float32
    back = slices_to_volume(slices, geometry)
    assert back.shape == shape
    in_plane = [n for a, n in enumerate(shape) if a != axis]
    if max(in_plane) <= size:
        np.testing.assert_array_equal(back, volume)
    else:
        # Cropped in-plane: identical inside the kept centre window, fill value outside.
        (w0, w1), _ = geometry.windows()
        window = [slice(None)] * 3
        plane_axes = [a for a in range(3) if a != axis]
        window[plane_axes[0]], window[plane_axes[1]] = w0, w1
        np.testing.assert_array_equal(back[tuple(window)], volume[tuple(window)])
        outside = np.ones(shape, bool)
        outside[tuple(window)] = False
        assert np.all(back[outside] == 0)


def test_selected_slices_and_fill_and_integer_labels():
    labels = np.random.default_rng(1).integers(0, 4, size=(16, 16, 8)).astype(np.int16)
    keep = [1, 2, 5]
    slices, geometry = volume_to_slices(labels, 2, 16, indices=keep)
    assert slices.dtype == np.int16 and slices.shape == (3, 16, 16)
    back = slices_to_volume(slices, geometry, fill=-1)
    np.testing.assert_array_equal(back[:, :, keep], labels[:, :, keep])
    assert np.all(back[:, :, [0, 3, 4, 6, 7]] == -1)
    assert SliceGeometry.from_dict(geometry.to_dict()) == geometry
    with pytest.raises(ValueError, match="geometry expects"):
        slices_to_volume(slices[:2], geometry)


def test_affine_and_header_untouched_through_files(tmp_path):
    affine = np.array([[-0.9, 0.1, 0, 100], [0.1, 0.9, 0, -80], [0, 0, 3.0, -50], [0, 0, 0, 1]])
    volume = np.random.default_rng(2).uniform(0, 1, (21, 19, 7)).astype(np.float32)
    write_volume(tmp_path / "in.nii.gz", volume, affine)
    data, in_affine, header = read_volume(tmp_path / "in.nii.gz")
    slices, geometry = volume_to_slices(data, 2, 24)
    write_volume(tmp_path / "out.nii.gz", slices_to_volume(slices, geometry), in_affine, header)
    out, out_affine, out_header = read_volume(tmp_path / "out.nii.gz")
    np.testing.assert_array_equal(out, volume)
    np.testing.assert_array_equal(out_affine, in_affine)
    assert out_header.get_zooms() == header.get_zooms()


def test_foreground_slices_and_crop_box():
    mask = np.zeros((10, 10, 6), bool)
    mask[2:8, 2:8, 1] = True  # 36% of the slice
    mask[4, 4, 3] = True  # 1%
    assert foreground_slices(mask, 2, 0.05).tolist() == [1]
    assert foreground_slices(mask, 2, 0.0).tolist() == [1, 3]
    assert foreground_slices(mask.astype(np.float32) * 5, 2, 0.0).tolist() == [1, 3]
    box = crop_box_to_mask(mask, margin=1)
    assert box == (slice(1, 9), slice(1, 9), slice(0, 5))
    with pytest.raises(ValueError, match="empty mask"):
        crop_box_to_mask(np.zeros((3, 3, 3)))
