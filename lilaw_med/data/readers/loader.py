"""Loading: :class:`MedicalImageReader` (one MONAI ``ImageReader`` over the table of formats) and
:class:`LoadMedicalImaged`, the dictionary transform the presets start with.

Spatial axes follow MONAI's convention for every format (x first: a 2D image is (W, H)), so files of
different formats holding the same picture give the same array.
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from monai.config import KeysCollection
from monai.data import ImageReader
from monai.transforms import LoadImage, MapTransform

from lilaw_med.data.readers.common import _one_line_errors
from lilaw_med.data.readers.formats import FORMATS, checked_kind, family
from lilaw_med.errors import InputError

__all__ = ["LoadMedicalImaged", "MedicalImageReader"]


class MedicalImageReader(ImageReader):
    """Dispatches each path to the reader of its format in :data:`~lilaw_med.data.readers.formats.FORMATS`.

    Example::

        from monai.transforms import LoadImage

        image = LoadImage(reader=MedicalImageReader(voi_lut=True), image_only=True)("chest.dcm")

    Args:
        voi_lut: apply the VOI LUT / window stored in DICOM files.
        invert_monochrome1: invert MONOCHROME1 DICOM images.
    """

    def __init__(self, voi_lut: bool = False, invert_monochrome1: bool = True) -> None:
        super().__init__()
        self.voi_lut = voi_lut
        self.invert_monochrome1 = invert_monochrome1
        self._readers: dict[str, ImageReader] = {
            name: fmt.reader(voi_lut=voi_lut, invert_monochrome1=invert_monochrome1)
            for name, fmt in FORMATS.items()
        }

    def _family(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> str:
        names = [filename] if isinstance(filename, (str, os.PathLike)) else list(filename)
        kinds = {family(checked_kind(name)) for name in names}
        if len(kinds) != 1:
            raise InputError(f"{names}: the paths of one item mix formats {sorted(kinds)}.")
        return kinds.pop()

    def verify_suffix(self, filename: Sequence[str | os.PathLike] | str | os.PathLike) -> bool:
        """Whether the paths have a supported format."""
        try:
            self._family(filename)
        except (ValueError, FileNotFoundError):
            return False
        return True

    def read(self, data: Sequence[str | os.PathLike] | str | os.PathLike, **kwargs: Any) -> Any:
        """Reads with the backend for the path; returns ``(backend, image object, paths)``.

        Raises:
            FileNotFoundError: for a missing path.
            InputError: one line naming the file, for an unsupported format or a file the
                backend cannot read.
        """
        name = self._family(data)
        backend = self._readers[name]
        names = [data] if isinstance(data, (str, os.PathLike)) else list(data)
        shown = str(names[0]) if len(names) == 1 else str([str(n) for n in names])
        with _one_line_errors(shown, "not a readable image file"):
            obj = backend.read(data, **kwargs)
        check = FORMATS[name].after_read
        if check is not None:
            for path, image in zip(names, obj if isinstance(obj, list) else [obj], strict=False):
                problem = check(image)
                if problem:
                    raise InputError(f"{path}: {problem}")
        return backend, obj, shown

    def get_data(self, img: Any) -> tuple[np.ndarray, dict]:
        """Array and metadata from what :meth:`read` returned.

        Raises:
            InputError: one line naming the file, for pixels that cannot be read (a truncated
                PNG, a refused DICOM or NIfTI file, ...).
        """
        backend, obj, shown = img
        with _one_line_errors(shown, "cannot read the pixels", keep=(InputError,)):
            return backend.get_data(obj)

class LoadMedicalImaged(MapTransform):
    """``LoadImaged`` with :class:`MedicalImageReader`, whose errors reach the caller unwrapped.

    MONAI's ``LoadImaged`` tries readers in turn and folds their tracebacks into one
    ``RuntimeError``; here the reader is given at call time, so the error that names the file
    and what is wrong is the one raised.

    Example::

        load = LoadMedicalImaged("image")
        item = load({"id": "p1", "image": "images/p1_0.dcm", "label": 1})
        item["image"].shape  # (1, 128, 128): channel first, x first

    Args:
        keys: the keys holding paths.
        voi_lut: apply the VOI LUT / window stored in DICOM files.
        invert_monochrome1: invert MONOCHROME1 DICOM images.
        ensure_channel_first: put the channel first ((C, spatial...)).
        dtype: the output dtype.
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self,
        keys: KeysCollection,
        voi_lut: bool = False,
        invert_monochrome1: bool = True,
        ensure_channel_first: bool = True,
        dtype: Any = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.reader = MedicalImageReader(voi_lut=voi_lut, invert_monochrome1=invert_monochrome1)
        self._loader = LoadImage(
            reader=self.reader, image_only=True, ensure_channel_first=ensure_channel_first, dtype=dtype
        )

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self._loader(d[key], reader=self.reader)
        return d

