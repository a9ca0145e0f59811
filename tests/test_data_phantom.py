"""The built-in cohort: MNI152 anatomy, determinism, missingness presets, contrasts, ultrasound."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage as ndi

from mmhvae.data import phantom
from mmhvae.data.cohort import Cohort, load_subject
from mmhvae.data.phantom import template

SHAPE = (32, 32, 16)


def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def subject():
    return phantom.generate_subject(0, seed=0, shape=(64, 64, 32))


def _core(subject, tissue, inside=True):
    """Voxels of one tissue away from its boundary (no partial volume), or all of them if too few."""
    voxels = (subject.tissues == tissue) & inside
    core = ndi.binary_erosion(subject.tissues == tissue) & inside
    return core if core.sum() >= 5 else voxels


def _median(subject, modality, tissue):
    inside = subject.sector if modality == "us" else subject.brain_mask
    voxels = _core(subject, tissue, inside)
    assert voxels.sum() >= 3, (modality, phantom.TISSUE_NAMES[tissue])
    return float(np.median(subject.images[modality][voxels]))


def test_same_seed_identical_files_different_seed_different(tmp_path):
    a = phantom.make_cohort(tmp_path / "a", subjects=3, seed=5, shape=SHAPE, workers=1).parent
    b = phantom.make_cohort(tmp_path / "b", subjects=3, seed=5, shape=SHAPE, workers=2).parent
    c = phantom.make_cohort(tmp_path / "c", subjects=3, seed=6, shape=SHAPE, workers=1).parent
    files_a, files_b, files_c = _files(a), _files(b), _files(c)
    assert files_a == files_b  # byte-identical, whatever the number of worker processes
    common = set(files_a) & set(files_c)
    images = [k for k in common if k.name.endswith(("-us.nii.gz", "-cet1.nii.gz"))]
    assert images and all(files_a[k] != files_c[k] for k in images)


def test_cohort_layout_loads_and_validates(tmp_path):
    manifest = phantom.make_cohort(tmp_path, subjects=4, seed=0, shape=SHAPE, missingness="complete", workers=1)
    cohort = Cohort.load(tmp_path)  # the folder's manifest.csv
    assert cohort.source == manifest and cohort.modalities == ["us", "t2", "cet1", "flair"]
    assert cohort.patterns() == {(True, True, True, True): 4}
    volumes = load_subject(cohort.subjects[0])
    assert volumes.shape == SHAPE and volumes.brain_mask is not None and volumes.brain_mask.any()
    assert set(np.unique(volumes.seg)) <= {0, 1, 2, 3} and (volumes.seg > 0).any()
    np.testing.assert_allclose(np.diag(volumes.affine)[:3], phantom.default_spacing(SHAPE))
    us = volumes.images["us"]
    assert 0.002 < (us > 0).mean() < 0.5 and us.max() <= 255  # a sector, zero outside
    # MR is skull-stripped: nothing outside the brain mask.
    assert not volumes.images["t2"][~volumes.brain_mask].any()


def test_remind_missingness_on_100_subjects():
    avail = phantom.availability(100, seed=0, missingness="remind")
    fractions = dict(zip(phantom.MODALITIES, avail.mean(axis=0)))
    for modality in phantom.MODALITIES:
        assert fractions[modality] == pytest.approx(phantom.REMIND[modality], abs=0.02), modality
    assert avail.all(axis=1).mean() == pytest.approx(0.13, abs=0.02)
    assert avail.any(axis=1).all()
    for seed in range(5):  # any seed: exact counts
        avail = phantom.availability(100, seed=seed, missingness="remind")
        assert avail.sum(axis=0).tolist() == [100, 63, 94, 20] and avail.all(axis=1).sum() == 13
    splits = phantom.assign_splits(avail, seed=0)
    assert [splits.count(s) for s in ("train", "val", "test")] == [70, 15, 15]
    # Stratified: the subjects with FLAIR are spread over the splits.
    flair_splits = {s for s, row in zip(splits, avail) if row[3]}
    assert flair_splits == {"train", "val", "test"}
    with pytest.raises(ValueError, match="missingness"):
        phantom.availability(10, 0, "random")
    with pytest.raises(ValueError, match="remind"):
        phantom.availability(10, 0, "remind", ["t1", "t2"])


def test_remind_manifest_matches_availability(tmp_path):
    manifest = phantom.make_cohort(tmp_path, subjects=8, seed=3, shape=(16, 16, 8), workers=1)
    cohort = Cohort.load(manifest)
    expected = phantom.availability(8, 3, "remind")
    assert [s.available(cohort.modalities) for s in cohort.subjects] == [tuple(r) for r in expected]


def test_brats_preset_has_four_mr_contrasts_with_random_missing_ones(tmp_path):
    avail = phantom.availability(200, seed=1, missingness="brats")
    assert avail.shape == (200, 4) and avail.any(axis=1).all()
    assert 0.2 < avail.all(axis=1).mean() < 0.4  # BRATS_MISSING[0] = 30% complete
    assert len({tuple(r) for r in avail}) > 8  # many different patterns
    assert np.all((avail.mean(axis=0) > 0.6) & (avail.mean(axis=0) < 0.9))  # each modality sometimes missing
    manifest = phantom.make_cohort(tmp_path, subjects=6, seed=1, shape=(16, 16, 8), missingness="brats", workers=1)
    header = manifest.read_text().splitlines()[0].split(",")
    assert header == ["subject", "t1", "t2", "cet1", "flair", "seg", "mask", "split"]
    cohort = Cohort.load(manifest)
    assert set(cohort.modalities) == {"t1", "t2", "cet1", "flair"}
    expected = phantom.availability(6, 1, "brats")
    assert sorted(s.available(["t1", "t2", "cet1", "flair"]) for s in cohort.subjects) == sorted(map(tuple, expected))


def test_mr_contrasts_follow_tissue_physics(subject):
    t = phantom
    med = lambda m, k: _median(subject, m, k)  # noqa: E731
    assert med("t1", t.WM) > med("t1", t.GM) > med("t1", t.CSF)  # T1w: white matter brightest, CSF dark
    assert med("t2", t.CSF) > med("t2", t.GM) > med("t2", t.WM)  # T2w: CSF brightest
    assert med("flair", t.CSF) < 0.3 * med("flair", t.WM)  # FLAIR: CSF nulled ...
    assert med("flair", t.OEDEMA) > 1.3 * med("flair", t.WM)  # ... oedema bright
    # The rim enhances (a thin shell: partial volume with the core and oedema at 3 mm voxels).
    assert med("cet1", t.ENHANCING) > 1.15 * med("cet1", t.WM) and med("cet1", t.ENHANCING) > 1.5 * med("cet1", t.NECROSIS)
    assert med("cet1", t.ENHANCING) / med("cet1", t.WM) > 1.4 * med("t1", t.ENHANCING) / med("t1", t.WM)  # gadolinium
    vessels = (subject.tissues == t.VESSEL) & subject.brain_mask
    if vessels.sum() >= 3:  # vessels enhance too
        assert np.median(subject.images["cet1"][vessels]) > 2 * med("cet1", t.CSF)


def test_white_matter_lesions_differ_between_flair_and_t2():
    for index in range(8):
        s = phantom.generate_subject(index, seed=0, shape=(48, 48, 24), modalities=["t2", "flair"])
        if (s.tissues == phantom.LESION).sum() >= 3:
            break
    else:
        pytest.fail("no subject among 8 has white-matter lesions")
    lesion = s.tissues == phantom.LESION
    wm, csf = _core(s, phantom.WM), _core(s, phantom.CSF)
    flair, t2 = s.images["flair"], s.images["t2"]
    assert np.median(flair[lesion]) > 1.2 * np.median(flair[wm]) > np.median(flair[csf])  # FLAIR: lesion brightest
    assert np.median(t2[csf]) > np.median(t2[lesion]) > np.median(t2[wm])  # T2: CSF brighter than lesions


def test_ultrasound_sector_and_echogenicity(subject):
    us, sector = subject.images["us"], subject.sector
    assert sector is not None and 0.005 < sector.mean() < 0.3
    assert not us[~sector].any()  # zero outside the field of view
    assert (us[sector] > 0).mean() > 0.8 and us.max() <= 255 and np.array_equal(us, np.rint(us))
    assert (sector & (subject.seg > 0)).sum() > 0.5 * (subject.seg > 0).sum()  # aimed at the tumour
    # Pooled over three subjects (few CSF voxels fall in one sector at 3 mm, most beside a reflecting boundary).
    subjects = [subject] + [phantom.generate_subject(i, seed=0, shape=(64, 64, 32), modalities=["us"]) for i in (1, 2)]
    pooled = {k: np.median(np.concatenate([s.images["us"][(s.tissues == k) & s.sector] for s in subjects]))
              for k in (phantom.CSF, phantom.WM, phantom.ENHANCING)}
    assert pooled[phantom.CSF] < 0.7 * pooled[phantom.ENHANCING]  # CSF (nearly) anechoic
    assert pooled[phantom.WM] < 0.7 * pooled[phantom.ENHANCING]  # the tumour hyperechoic


def test_label_map_is_the_tumour(subject):
    seg, tissues = subject.seg, subject.tissues
    for tissue, label in phantom.SEG_OF_TISSUE.items():
        assert np.all(seg[tissues == tissue] == label)
    assert not seg[~subject.brain_mask].any()
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    # Concentric: the necrotic core inside the enhancing shell, oedema further out.
    labelled = np.argwhere(seg > 0)
    centre = labelled.mean(axis=0)
    distance = {k: np.linalg.norm(np.argwhere(seg == k) - centre, axis=1).mean() for k in (1, 2, 3)}
    assert distance[1] < distance[3] < distance[2]
    components, count = ndi.label(seg > 0)
    assert np.bincount(components.ravel())[1:].max() > 0.9 * (seg > 0).sum()  # one tumour


def test_subjects_differ_but_share_the_anatomy(subject):
    other = phantom.generate_subject(1, seed=0, shape=(64, 64, 32), modalities=["t2"])
    dice = lambda a, b: 2 * (a & b).sum() / (a.sum() + b.sum())  # noqa: E731
    assert 0.7 < dice(subject.brain_mask, other.brain_mask) < 0.98
    assert 0.3 < dice(subject.tissues == phantom.WM, other.tissues == phantom.WM) < 0.9
    assert not np.array_equal(subject.seg > 0, other.seg > 0)
    # Both are brains: ventricles (CSF deep inside) and a cortex of grey matter over white matter.
    for s in (subject, other):
        depth = ndi.distance_transform_edt(s.brain_mask, sampling=phantom.default_spacing((64, 64, 32)))
        assert ((s.tissues == phantom.CSF) & (depth > 20)).sum() > 20
        assert np.mean(s.tissues[(depth > 0) & (depth < 4)] == phantom.GM) > np.mean(s.tissues[depth > 20] == phantom.GM)


def test_clear_error_when_nilearn_is_absent(monkeypatch, tmp_path):
    template.load_template.cache_clear()
    template.blurred_template.cache_clear()
    monkeypatch.setitem(sys.modules, "nilearn", None)  # importlib.util.find_spec("nilearn") -> None
    with pytest.raises(phantom.TemplateMissingError, match=r"nilearn.*pip install"):
        phantom.generate_subject(0, shape=(16, 16, 8))
    monkeypatch.undo()

    class Spec:  # nilearn installed without its data files
        submodule_search_locations = [str(tmp_path)]

    monkeypatch.setattr(template.importlib.util, "find_spec", lambda name: Spec())
    with pytest.raises(phantom.TemplateMissingError, match="mni_icbm152_t1"):
        phantom.template_paths()


def _white_matter_ball(shape=(64, 64, 64), spacing=(1.0, 1.0, 1.0), radius=28.0, reflector=None):
    """A ball of white matter (optionally with a calcified disc) as an :class:`Anatomy`."""
    from mmhvae.data.phantom.anatomy import Anatomy
    from mmhvae.data.phantom.fields import grid

    x, y, z = grid(shape, spacing)
    brain = (x * x + y * y + z * z) < radius**2
    fractions = np.zeros((len(phantom.TISSUE_NAMES) - 1, *shape), np.float32)
    fractions[phantom.WM - 1][brain] = 1.0
    if reflector is not None:
        fractions[:, reflector & brain] = 0.0
        fractions[phantom.CALCIFICATION - 1][reflector & brain] = 1.0
    tissues = np.where(brain, phantom.WM, phantom.BACKGROUND).astype(np.uint8)
    if reflector is not None:
        tissues[reflector & brain] = phantom.CALCIFICATION
    return Anatomy(fractions=fractions, tissues=tissues, brain=brain, tumour_centre=np.array([0.0, 0.0, 12.0]),
                   tumour_radius=5.0, brain_centre=np.zeros(3))


def test_ultrasound_strong_reflector_casts_an_acoustic_shadow():
    """Behind a calcified disc on the beam the image is darker than without it; before it, unchanged."""
    from mmhvae.data.phantom import ultrasound
    from mmhvae.data.phantom.fields import grid

    spacing = (1.0, 1.0, 1.0)
    plain = _white_matter_ball()
    apex, beam = ultrasound._probe(np.random.default_rng(5), plain, spacing)
    x, y, z = grid(plain.brain.shape, spacing)
    q = [x - apex[0], y - apex[1], z - apex[2]]
    depth = q[0] * beam[0] + q[1] * beam[1] + q[2] * beam[2]
    off_axis = np.sqrt(np.maximum(sum(c * c for c in q) - depth**2, 0.0))
    disc = (np.abs(depth - 12.0) < 1.5) & (off_axis < 8.0)
    image, sector = ultrasound.ultrasound_image(np.random.default_rng(5), plain, spacing)
    shadowed, sector2 = ultrasound.ultrasound_image(np.random.default_rng(5), _white_matter_ball(reflector=disc), spacing)
    assert np.array_equal(sector, sector2)  # same probe, same field of view
    behind = sector & (depth > 20.0) & (depth < 35.0) & (off_axis < 3.0)
    before = sector & (depth > 3.0) & (depth < 8.0) & (off_axis < 3.0)
    assert behind.sum() > 20 and before.sum() > 5
    assert shadowed[behind].mean() < 0.6 * image[behind].mean()  # the acoustic shadow
    assert abs(shadowed[before].mean() - image[before].mean()) < 0.1 * image[before].mean() + 1.0
    assert shadowed[disc & sector].mean() > 1.5 * image[disc & sector].mean()  # the reflector itself is bright
