from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from ml_worker import cli
from ml_worker.experiments.bench import resample_case, synthetic_ct


def _case(tmp_path, shape=(12, 10, 8)):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape).astype(np.float32)
    label = np.zeros(shape, np.uint8)
    label[3:7, 2:6, 2:5] = 1
    affine = np.array([[0, 0, 2.0, 5], [1.5, 0, 0, -3], [0, 1.0, 0, 7], [0, 0, 0, 1]])
    paths = tmp_path / "img.nii.gz", tmp_path / "lab.nii.gz"
    nib.save(nib.Nifti1Image(image, affine), str(paths[0]))
    nib.save(nib.Nifti1Image(label, affine), str(paths[1]))
    return paths, affine, shape


def test_resampled_case_covers_the_same_space_and_keeps_its_labels(tmp_path):
    (image, label), affine, shape = _case(tmp_path)
    name = resample_case(image, label, (23, 19, 15), tmp_path / "out")
    big = nib.load(str(tmp_path / "out" / "images" / f"{name}.nii"))
    big_label = np.asarray(nib.load(str(tmp_path / "out" / "labels" / f"{name}.nii")).dataobj)
    assert big.shape == big_label.shape == (23, 19, 15)
    last = np.array([*(s - 1 for s in shape), 1])
    np.testing.assert_allclose(big.affine @ np.array([22, 18, 14, 1]), affine @ last)  # corner to corner
    np.testing.assert_allclose(big.affine[:, 3], affine[:, 3])
    assert set(np.unique(big_label)) == {0, 1}
    assert abs(big_label.sum() / big_label.size - 48 / 960) < 0.02  # same fraction of the volume


def test_synthetic_ct_has_air_body_and_bright_spheres():
    image, affine = synthetic_ct((40, 40, 20))
    assert image.dtype == np.int16 and image.shape == (40, 40, 20)
    assert image[0, 0, 0] < -900 and abs(int(np.median(image[20, 20]))) < 100 and image.max() > 250
    assert np.allclose(np.diag(affine)[:3], (0.75, 0.75, 1.0))


def test_bench_presegment_reports_each_scenario(tmp_path, capsys):
    (image, _), _, _ = _case(tmp_path)
    folder = tmp_path / "images"
    folder.mkdir()
    image.rename(folder / image.name)
    code = cli.main(
        ["bench-presegment", "--images", str(folder), "--synthetic", "24x24x16", "--roi", "16x16x16",
         "--spacing", "0.5", "--threads", "1", "--out", str(tmp_path / "r.json")]
    )  # fmt: skip
    assert code == 0
    report = json.loads(capsys.readouterr().out)
    assert report == json.loads((tmp_path / "r.json").read_text())
    files, ct = report["scenarios"]
    assert (files["name"], files["volumes"], files["shape"]) == ("images", 1, [12, 10, 8])
    assert (ct["name"], ct["shape"], ct["sliding_window"]) == ("synthetic_ct", [24, 24, 16], True)
    assert all(s["volumes_per_s"] > 0 and s["peak_rss_mb"] > 0 for s in (files, ct))
