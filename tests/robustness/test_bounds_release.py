"""Released files that claim far more than a tile: `check` (and so `build`, `agreement` and `train`) refuses them
from their headers, before decoding, within seconds and a few hundred MB."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from robustness.helpers import (
    assert_user_error,
    bounded,
    claimed_png,
    claimed_tiff,
    mirror_release,
    replace_file,
    run_cli,
    zip_bytes,
)

TILE = "Human_Larynx_01"
A2 = "annotator2"


def _damaged(release, root: Path, path: Path, data: bytes) -> Path:
    """The mirrored copy of the released ``path`` under ``root``, replaced by ``data``."""
    return replace_file(root / Path(path).relative_to(release.root), data)


@pytest.mark.parametrize("which", ["label-mask-tiff", "binary-mask-png", "tile-image"])
def test_released_file_claiming_a_huge_image(release, tmp_path, which):
    """A released label mask (TIFF), binary mask (PNG) or tile image (TIFF) whose header claims 100000x100000
    (PNG: 20000x4000): check names the file and the claimed shape, before decoding it (was: an allocation of up
    to 28 GiB)."""
    root = mirror_release(release.root, tmp_path / "release")
    if which == "label-mask-tiff":
        labels = np.zeros((512, 512), np.uint16)
        path = _damaged(
            release,
            root,
            release.markups[A2].variants["label_masks_modify"][TILE],
            claimed_tiff(labels, 100_000, 100_000),
        )
    elif which == "binary-mask-png":
        path = _damaged(
            release,
            root,
            release.markups[A2].variants["mask_binary"][TILE],
            claimed_png(np.zeros((512, 512), np.uint8), 20_000, 4_000),
        )
    else:
        image = np.zeros((512, 512, 3), np.uint8)
        path = _damaged(release, root, release.images[TILE], claimed_tiff(image, 100_000, 100_000))
    with bounded(seconds=60, megabytes=400):
        result = run_cli("check", "--source", root)
    assert_user_error(
        result, f"{path}: its header declares an image of shape", "far larger than the 512x512 tile"
    )


def test_oval_roi_of_absurd_size(release, tmp_path):
    """A RoiSet whose one member is an oval 1e12 px wide (valid in form): the zip and member are named and the
    size given (was: an 11 TiB polygon)."""
    from roifile import ROI_OPTIONS, ROI_TYPE, ImagejRoi

    root = mirror_release(release.root, tmp_path / "release")
    released = release.markups[A2].rois[TILE]
    with zipfile.ZipFile(released) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    oval = ImagejRoi(
        roitype=ROI_TYPE.OVAL, options=ROI_OPTIONS.SUB_PIXEL_RESOLUTION, left=10, top=10, right=30, bottom=30,
        xd=10.0, yd=10.0, widthd=1e12, heightd=20.0,
    )  # fmt: skip
    members["9999-9999.roi"] = oval.tobytes()
    path = _damaged(release, root, released, zip_bytes(members))
    with bounded(seconds=60, megabytes=400):
        result = run_cli("check", "--source", root)
    assert_user_error(result, str(path), "9999-9999.roi", "oval of 1e+12 x 20 px")
