"""Image readers: one MONAI ``ImageReader`` that dispatches on the path to the right backend, and the
pre-flight's check of a file with the same rules.

One module per format: :mod:`~lilaw_med.data.readers.dicom` (file or series folder),
:mod:`~lilaw_med.data.readers.nifti`, :mod:`~lilaw_med.data.readers.raster` (PNG/JPEG/TIFF/BMP),
:mod:`~lilaw_med.data.readers.npy`; :mod:`~lilaw_med.data.readers.formats` holds the one table
(family -> how a path is recognised, MONAI reader, header check) that both loading
(:class:`MedicalImageReader`, :class:`LoadMedicalImaged`) and :func:`read_header` dispatch through;
:mod:`~lilaw_med.data.readers.common` the size bound, the regular-file rule and :class:`ImageHeader`.

**One verdict per file.** :func:`read_header` (the pre-flight of training and ``validate-data``,
``predict``) refuses exactly what the loader refuses and reads as little as the format allows while
staying truthful. See docs/data.md for the rules of each format.
"""

from __future__ import annotations

from lilaw_med.data.readers.common import (
    DEFAULT_MAX_IMAGE_BYTES,
    MAX_IMAGE_BYTES_ENV,
    ImageHeader,
    decoder_environment,
    max_image_bytes,
)
from lilaw_med.data.readers.dicom import (
    DICOM_SUFFIXES,
    DicomReader,
    dicom_image_problem,
    is_dicom_file,
    list_series_files,
)
from lilaw_med.data.readers.formats import FORMATS, ImageFormat, image_kind, read_header
from lilaw_med.data.readers.loader import LoadMedicalImaged, MedicalImageReader
from lilaw_med.data.readers.nifti import NIFTI_SUFFIXES, NiftiReader, nifti_problem
from lilaw_med.data.readers.npy import NUMPY_SUFFIXES
from lilaw_med.data.readers.raster import PIL_SUFFIXES

__all__ = [
    "DEFAULT_MAX_IMAGE_BYTES",
    "DICOM_SUFFIXES",
    "FORMATS",
    "MAX_IMAGE_BYTES_ENV",
    "NIFTI_SUFFIXES",
    "NUMPY_SUFFIXES",
    "PIL_SUFFIXES",
    "DicomReader",
    "ImageFormat",
    "ImageHeader",
    "LoadMedicalImaged",
    "MedicalImageReader",
    "NiftiReader",
    "decoder_environment",
    "dicom_image_problem",
    "image_kind",
    "is_dicom_file",
    "list_series_files",
    "max_image_bytes",
    "nifti_problem",
    "read_header",
]
