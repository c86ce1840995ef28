"""Readers of the released files, one per kind, each returning a checked array; errors name the file.

A released file is read here and nowhere else, so that every caller sees the same checks and messages.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def read_mask(path: str | Path) -> np.ndarray:
    """A released mask file: ``.tif`` label masks as uint16, ``.png`` binaries and maps as uint8, 2-D.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or not a single-channel 2-D image; the message names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such mask file")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
        else:
            from PIL import Image

            with Image.open(path) as image:
                array = np.asarray(image)
    except Exception as error:  # decoders raise many types for corrupt files
        raise ValueError(f"{path}: unreadable mask image ({type(error).__name__}: {error})") from None
    if (
        array.ndim == 3
        and array.shape[2] in (3, 4)
        and all(np.array_equal(array[..., 0], array[..., i]) for i in range(1, 3))
    ):
        array = array[..., 0]
    if array.ndim != 2:
        raise ValueError(f"{path}: expected a 2-D single-channel mask, got shape {array.shape} {array.dtype}")
    return array
