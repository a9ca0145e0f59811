"""nnU-Net v2 export and its validator, with a deterministic stand-in synthesizer (no trained model)."""

from __future__ import annotations

import json
import nibabel as nib
import numpy as np
import pytest

from mmhvae.data.cohort import Cohort
from mmhvae.data.phantom import make_cohort
from mmhvae.downstream.nnunet_export import (
    WHOLE_TUMOUR,
    NnunetDatasetError,
    export_nnunet,
    label_lookup,
    remap_labels,
    validate_nnunet_dataset,
)

MODALITIES = ["us", "t2", "cet1", "flair"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Cohort:
    # Six subjects with ReMIND missingness: some lack T2 or FLAIR, one is in the test split.
    root = tmp_path_factory.mktemp("cohort")
    return Cohort.load(make_cohort(root, subjects=6, seed=0, shape=(24, 24, 16), workers=1), modalities=MODALITIES)


class CopySynthesizer:
    """Fills every target with a copy of the first input (sorted by name), and records the calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[str], list[str]]] = []

    def __call__(self, inputs, targets):
        self.calls.append((sorted(inputs), list(targets)))
        source = inputs[sorted(inputs)[0]]
        return {t: nib.Nifti1Image(np.asarray(source.dataobj, dtype=np.float32), source.affine) for t in targets}


def test_observed_plus_synth_export_is_a_valid_dataset(cohort, tmp_path):
    synth = CopySynthesizer()
    out = tmp_path / "Dataset501_Phantom"
    summary = export_nnunet(cohort.subjects, out, channels=MODALITIES, synthesize=synth, log=lambda *_: None)
    dataset = validate_nnunet_dataset(out)

    assert dataset.channels == MODALITIES
    assert dataset.labels == {"background": 0, "necrotic": 1, "oedema": 2, "enhancing": 3}
    test_names = [s.name for s in cohort.subjects if s.split == "test"]
    assert sorted(dataset.test) == sorted(test_names) and dataset.test
    assert sorted(dataset.training) == sorted(s.name for s in cohort.subjects if s.split != "test")
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["numTraining"] == len(summary.training)
    assert meta["file_ending"] == ".nii.gz"
    assert (out / "labelsTs" / f"{test_names[0]}.nii.gz").is_file()

    # Observed channels are the acquired images; missing ones came from the synthesizer.
    provenance = json.loads((out / "mmhvae_export.json").read_text())["cases"]
    for subject in cohort.subjects:
        origin = provenance[subject.name]["channels"]
        for modality in MODALITIES:
            assert origin[modality] == ("observed" if modality in subject.paths else "synthetic")
    incomplete = [s for s in cohort.subjects if len(s.paths) < len(MODALITIES)]
    assert len(synth.calls) == len(incomplete)
    subject = next(s for s in cohort.subjects if "us" in s.paths and s.split != "test")
    written = nib.load(str(out / "imagesTr" / f"{subject.name}_0000.nii.gz")).get_fdata()
    acquired = nib.load(str(subject.paths["us"])).get_fdata()
    np.testing.assert_allclose(written, acquired)


def test_synthetic_only_channel_never_sees_its_own_modality(cohort, tmp_path):
    synth = CopySynthesizer()
    out = tmp_path / "Dataset502_SyntheticUS"
    export_nnunet(cohort.subjects, out, channels=["us"], synthetic=["us"], synthesize=synth,
                  labels=WHOLE_TUMOUR, log=lambda *_: None)
    dataset = validate_nnunet_dataset(out)
    assert dataset.channels == ["us"] and dataset.labels == {"background": 0, "tumour": 1}
    assert synth.calls and all("us" not in inputs and targets == ["us"] for inputs, targets in synth.calls)
    label = np.asarray(nib.load(str(out / "labelsTr" / f"{dataset.training[0]}.nii.gz")).dataobj)
    assert set(np.unique(label)) <= {0, 1}


def test_validator_reports_missing_channel_geometry_and_labels(cohort, tmp_path):
    out = tmp_path / "Dataset503_Broken"
    export_nnunet(cohort.subjects, out, channels=MODALITIES, synthesize=CopySynthesizer(), log=lambda *_: None)
    case = validate_nnunet_dataset(out).training[0]
    (out / "imagesTr" / f"{case}_0002.nii.gz").unlink()
    second = sorted((out / "imagesTr").glob("*_0001.nii.gz"))[-1]
    image = nib.load(str(second))
    shifted = image.affine.copy()
    shifted[0, 3] += 5.0
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj), shifted), str(second))
    label_file = sorted((out / "labelsTr").glob("*.nii.gz"))[-1]
    label = nib.load(str(label_file))
    data = np.asarray(label.dataobj).copy()
    data[0, 0, 0] = 7
    nib.save(nib.Nifti1Image(data, label.affine), str(label_file))

    with pytest.raises(NnunetDatasetError) as info:
        validate_nnunet_dataset(out)
    message = str(info.value)
    assert f"{case}_0002.nii.gz" in message
    assert "affine differs" in message and second.name in message
    assert "values [7]" in message


def test_export_refuses_bad_names_and_unknown_labels(cohort, tmp_path):
    with pytest.raises(ValueError, match="DatasetXXX_Name"):
        export_nnunet(cohort.subjects, tmp_path / "phantoms", channels=["us"], log=lambda *_: None)
    names, remap = label_lookup({"background": [0], "tumour": [1, 2]})
    assert names == {"background": 0, "tumour": 1}
    with pytest.raises(ValueError, match=r"seg.nii.gz: label values \[3\]"):
        remap_labels(np.array([[[0, 1, 3]]]), remap, "seg.nii.gz")
    with pytest.raises(ValueError, match="lack channels"):
        # A subject without T2 needs a synthesizer for a T2 channel.
        export_nnunet(cohort.subjects, tmp_path / "Dataset504_X", channels=["t2"], log=lambda *_: None)


def test_validator_on_a_folder_without_dataset_json(tmp_path):
    folder = tmp_path / "Dataset505_Empty"
    (folder / "imagesTr").mkdir(parents=True)
    with pytest.raises(NnunetDatasetError, match="dataset.json: missing"):
        validate_nnunet_dataset(folder)
    with pytest.raises(FileNotFoundError):
        validate_nnunet_dataset(tmp_path / "Dataset506_Absent")
