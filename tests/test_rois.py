"""ImageJ RoiSets: every ROI type, bad input, findings, the round trip, and the real release's ROI counts."""

from __future__ import annotations

import csv
import zipfile

import numpy as np
import pytest
from roifile import ROI_TYPE, ImagejRoi, roiwrite

from cryonuseg_hf.data.roi_checks import check_nuclei
from cryonuseg_hf.data.rois import Nucleus, RoiError, polygon_area, read_roi_set, write_roi_set


def _freehand(points, name, roitype=ROI_TYPE.FREEHAND):
    roi = ImagejRoi.frompoints(np.asarray(points, np.float32), name=name)
    roi.roitype = roitype
    return roi


def _box(roitype, name, left, top, right, bottom):
    roi = ImagejRoi()
    roi.roitype = roitype
    roi.name = name
    roi.left, roi.top, roi.right, roi.bottom = left, top, right, bottom
    return roi


def test_every_roi_type_becomes_a_float_polygon(tmp_path):
    path = tmp_path / "set.zip"
    roiwrite(
        path,
        [
            _freehand([[10.25, 10.5], [20.75, 10.5], [15.5, 20.125]], "a-polygon", ROI_TYPE.POLYGON),
            _freehand([[30.5, 30.5], [40.5, 30.5], [40.5, 40.5], [30.5, 40.5]], "b-freehand"),
            _freehand([[50, 50], [60, 50], [60, 58], [50, 58]], "c-traced", ROI_TYPE.TRACED),
            _box(ROI_TYPE.OVAL, "d-oval", 100, 200, 120, 210),
            _box(ROI_TYPE.RECT, "e-rect", 300, 310, 305, 330),
        ],
    )
    nuclei = read_roi_set(path)
    assert [n.roi_type for n in nuclei] == ["polygon", "freehand", "traced", "oval", "rectangle"]
    assert all(n.x.dtype == np.float32 and n.y.dtype == np.float32 for n in nuclei)
    np.testing.assert_array_equal(nuclei[0].x, np.float32([10.25, 20.75, 15.5]))  # sub-pixel kept
    np.testing.assert_array_equal(nuclei[0].y, np.float32([10.5, 10.5, 20.125]))
    oval = nuclei[3]
    # Every vertex lies on the ellipse inscribed in the bounding box (centre 110, 205; radii 10, 5).
    np.testing.assert_allclose(((oval.x - 110) / 10) ** 2 + ((oval.y - 205) / 5) ** 2, 1, atol=1e-5)
    assert len(oval.x) >= 32 and polygon_area(oval) == pytest.approx(np.pi * 50, rel=0.01)
    rect = nuclei[4]
    assert sorted(set(rect.x.tolist())) == [300, 305] and sorted(set(rect.y.tolist())) == [310, 330]
    assert polygon_area(rect) == 100
    assert check_nuclei(nuclei) == []


def test_order_is_by_file_name_not_by_zip_order(tmp_path):
    path = tmp_path / "unsorted.zip"
    square = [[0, 0], [4, 0], [4, 4], [0, 4]]
    roiwrite(path, [_freehand(square, name) for name in ("0300-0001", "0100-0001", "0200-0001")])
    assert [n.name for n in read_roi_set(path)] == ["0100-0001", "0200-0001", "0300-0001"]


def test_folder_of_roi_files_and_single_roi(tmp_path):
    folder = tmp_path / "Human_Skin_01"
    folder.mkdir()
    for name in ("b", "a"):
        _freehand([[1, 1], [5, 1], [5, 5]], name).tofile(folder / f"{name}.roi")
    assert [n.name for n in read_roi_set(folder)] == ["a", "b"]
    assert [n.name for n in read_roi_set(folder / "b.roi")] == ["b"]


def test_degenerate_and_outside_rois_are_kept_and_reported(tmp_path):
    path = tmp_path / "odd.zip"
    roiwrite(
        path,
        [
            _freehand([[10, 10], [20, 10], [20, 20], [10, 20]], "0-good"),
            _freehand([[30, 30], [35, 30], [30, 30]], "1-two-vertices"),
            _freehand([[40, 40], [45, 45], [50, 50]], "2-collinear"),
            _freehand([[500, 100], [515.5, 100], [515.5, 110], [500, 110]], "3-crosses-edge"),
            _freehand([[600, 600], [610, 600], [610, 610]], "4-outside"),
            _freehand([[70.1, 70.1], [70.4, 70.1], [70.4, 70.4]], "5-tiny"),
        ],
    )
    nuclei = read_roi_set(path)
    assert len(nuclei) == 6  # nothing dropped
    findings = {f.name: f for f in check_nuclei(nuclei, (512, 512), "odd.zip")}
    assert set(findings) == {"1-two-vertices", "2-collinear", "3-crosses-edge", "4-outside", "5-tiny"}
    assert "no pixel centre" in findings["5-tiny"].problem
    assert "2 distinct vertices" in findings["1-two-vertices"].problem
    assert "area 0" in findings["2-collinear"].problem
    assert (
        "reaches outside" in findings["3-crosses-edge"].problem
        and "clipped" in findings["3-crosses-edge"].action
    )
    assert "entirely outside" in findings["4-outside"].problem
    assert str(findings["4-outside"]).startswith("odd.zip: ROI 4-outside:")


def test_bad_input_names_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.zip"):
        read_roi_set(tmp_path / "missing.zip")

    empty = tmp_path / "empty.zip"
    zipfile.ZipFile(empty, "w").close()
    with pytest.raises(RoiError, match=r"empty\.zip: zip holds no \.roi files"):
        read_roi_set(empty)

    not_zip = tmp_path / "notazip.zip"
    not_zip.write_bytes(b"this is not a zip")
    with pytest.raises(RoiError, match=r"notazip\.zip: not a readable zip"):
        read_roi_set(not_zip)

    corrupt = tmp_path / "corrupt.zip"
    with zipfile.ZipFile(corrupt, "w") as archive:
        archive.writestr("0001-0001.roi", _freehand([[1, 1], [5, 1], [5, 5]], "ok").tobytes())
        archive.writestr("0002-0002.roi", b"Iout" + b"\x00" * 10)
    with pytest.raises(RoiError, match=r"corrupt\.zip: member 0002-0002\.roi: not a readable ImageJ ROI"):
        read_roi_set(corrupt)

    line = tmp_path / "line.zip"
    roi = ImagejRoi()
    roi.roitype = ROI_TYPE.LINE
    roi.x1, roi.y1, roi.x2, roi.y2 = 1.0, 1.0, 9.0, 9.0
    roiwrite(line, [roi], name=["0003-0003"])
    with pytest.raises(RoiError, match=r"line\.zip: member 0003-0003\.roi: ROI of type LINE"):
        read_roi_set(line)


def test_write_read_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    nuclei = []
    for i, kind in enumerate(("freehand", "polygon", "traced", "freehand")):
        angle = np.sort(rng.uniform(0, 2 * np.pi, 12))
        radius = rng.uniform(4, 9)
        centre = rng.uniform(20, 490, 2)
        x = (centre[0] + radius * np.cos(angle)).astype(np.float32)
        y = (centre[1] + radius * np.sin(angle)).astype(np.float32)
        nuclei.append(Nucleus(f"{i:04d}-nucleus", x, y, kind))
    path = write_roi_set(tmp_path / "out" / "pred_RoiSet.zip", nuclei)
    back = read_roi_set(path)
    assert [(n.name, n.roi_type) for n in back] == [(n.name, n.roi_type) for n in nuclei]
    for a, b in zip(nuclei, back, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    with pytest.raises(ValueError, match="duplicate ROI names"):
        write_roi_set(tmp_path / "dup.zip", [nuclei[0], nuclei[0]])


def test_real_release_counts_every_roi(release):
    """Every ROI of every tile is read: per tile as in instance_counts.csv, totals 7,596 / 8,044 / 8,251."""
    counts_csv = release.root / "metadata" / "instance_counts.csv"
    expected = {row["image"]: row for row in csv.DictReader(counts_csv.open())}
    totals = {}
    findings = []
    for markup, files in release.markups.items():
        for tile, path in files.rois.items():
            nuclei = read_roi_set(path)
            assert len(nuclei) == int(expected[tile][f"{markup}_roi_count"]), (markup, tile)
            assert len({n.name for n in nuclei}) == len(nuclei)
            totals[markup] = totals.get(markup, 0) + len(nuclei)
            findings += check_nuclei(nuclei, (512, 512), path.name)
    assert totals == {"annotator1_round1": 7596, "annotator1_round2": 8044, "annotator2": 8251}
    # The one ROI of the release that crosses the tile edge (x up to 513) is reported, not dropped.
    assert [(f.source, f.name) for f in findings] == [("Human_LymphNodes_03.zip", "0237-0503")]
