"""Pictures: PNG / JPEG / TIFF / BMP through MONAI's ``PILReader`` (palette, CMYK and YCbCr as RGB).

PNG and JPEG are compressed: only decoding tells whether the data is complete, so the pre-flight's
check (:func:`pil_header`) decodes the pixels, as the loader will, after bounding the page's declared
size from its header (:func:`_pil_size_problem`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai.data import PILReader

from lilaw_med.data.readers.common import ImageHeader, _size_problem
from lilaw_med.errors import InputError, one_line

__all__ = ["PIL_SUFFIXES", "pil_header", "pil_reader"]

PIL_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
# PIL modes whose bands are not grey or RGB(A) samples: converted when read (PILReader's converter)
_PIL_CONVERT = {"P": "RGB", "PA": "RGB", "LA": "L", "CMYK": "RGB", "YCbCr": "RGB"}
# bits per band of PIL modes other than 8-bit ones
_PIL_BITS = {"1": 1, "I": 32, "F": 32, "I;16": 16, "I;16B": 16, "I;16L": 16, "I;16N": 16}

def _pil_size_problem(image: Any) -> str | None:
    """Why a Pillow image (header read, pixels not yet) declares too many bytes, or ``None``."""
    width, height = (int(v) for v in image.size)
    mode = str(image.mode)
    bands = len(image.getbands())
    bits = _PIL_BITS.get(mode, 8)
    return _size_problem(
        (width, height, bands), bits, f"(width x height x bands) pixels of {bits} bits ({mode})"
    )


def _pil_convert(image: Any) -> Any:
    """Palette, CMYK and YCbCr pictures as RGB and grey+alpha as grey (bands that are colour samples)."""
    mode = _PIL_CONVERT.get(image.mode)
    return image.convert(mode) if mode else image


def pil_header(p: Path, kind: str, decode: bool) -> ImageHeader:
    """The pre-flight's verdict on a picture: its size bounded from the header, then its pixels decoded.

    Args:
        p: the file.
        kind: its family (from :func:`~lilaw_med.data.readers.image_kind`).
        decode: decode the pixels even where the header suffices.

    Returns:
        The header.

    Raises:
        InputError: one line naming the file and what is wrong.
    """
    # PNG and JPEG are compressed: as for compressed DICOM, only decoding tells whether the data
    # is complete (Pillow reads a PNG without its last chunk but not a JPEG cut a few bytes
    # short), so the pixels are decoded, as the loader will
    from PIL import Image

    try:
        im = Image.open(p)
    except Exception as e:
        raise InputError(f"{p}: not a readable image file ({one_line(e, with_type=True)}).") from e
    with im:
        problem = _pil_size_problem(im)  # from the header, before a pixel is decoded
        if problem:
            raise InputError(f"{p}: {problem}")
        try:
            size = im.size
            bands = Image.getmodebands(_PIL_CONVERT.get(im.mode, im.mode))
            im.load()
        except Exception as e:
            raise InputError(f"{p}: not a readable image file ({one_line(e, with_type=True)}).") from e
    return ImageHeader("pil", (int(size[0]), int(size[1])), bands, True, True)



def pil_reader() -> PILReader:
    """MONAI's ``PILReader`` with the colour conversions of :data:`_PIL_CONVERT`."""
    return PILReader(converter=_pil_convert)
