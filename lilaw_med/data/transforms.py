"""The MONAI transform chain of each modality preset (:mod:`lilaw_med.data.presets`).

Each preset's chain is a ``Compose`` over datalist items (see :mod:`lilaw_med.data.datalist`) that
outputs::

    {"image": float32 tensor (C, H, W) for 2D or (C, H, W, D) for 3D  (MONAI axis order: x first),
     "label": LongTensor scalar (single-label; -1 for an unlabelled item)
              or float tensor (L,) of 0/1 (multi-label),
     "id": str, "group": str ("" when none), ... other keys passed through}

Deterministic transforms come first and the random augmentations last, so MONAI's
``CacheDataset``/``PersistentDataset`` cache everything up to the first random one.
Augmentations are options and all off by default (the LiLAW method needs none).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import (
    Compose,
    DeleteItemsd,
    EnsureTyped,
    MapTransform,
    Orientationd,
    RandAffined,
    RandFlipd,
    RandRotate90d,
    Resized,
    ResizeWithPadOrCropd,
    ScaleIntensityd,
    ScaleIntensityRanged,
    Spacingd,
)
from monai.utils import convert_to_dst_type, ensure_tuple
from nibabel.orientations import aff2axcodes

from lilaw_med.data.curation import RECORD_KEYS
from lilaw_med.data.presets import get_preset
from lilaw_med.data.readers import LoadMedicalImaged
from lilaw_med.data.wsi import LoadWSIPatchd
from lilaw_med.errors import InputError

__all__ = [
    "CastLabeld",
    "FillNoned",
    "LoadImageOrPatchd",
    "OrientIfNeededd",
    "PrepareChannelsd",
    "ResizeScalePercentilesd",
    "ScaleIntensityPercentilesd",
    "build_transforms",
    "percentiles",
    "preset_defaults",
    "resolve_options",
]


def preset_defaults(preset: str) -> dict[str, Any]:
    """Returns the documented default options of a preset (their keys are the valid option names).

    Args:
        preset: a registered preset (:data:`lilaw_med.data.presets.PRESETS`).

    Returns:
        A new dict of option name -> default value.

    Raises:
        InputError: for an unknown preset.
    """
    return get_preset(preset).default_options()


def _check_window(opts: Mapping[str, Any], what: str) -> None:
    w = opts.get("window")
    if not (isinstance(w, (list, tuple)) and len(w) == 2 and float(w[1]) > 0):
        raise InputError(f"intensity '{opts['intensity']}' needs option 'window' = {what} but it is {w!r}.")


def resolve_options(preset: str, options: Mapping[str, Any] | None) -> dict[str, Any]:
    """A preset's options: its defaults updated with ``options``, checked.

    Args:
        preset: a registered preset.
        options: overrides of :func:`preset_defaults` (``data.options``).

    Returns:
        The complete options (``spatial_size`` a list of ``spatial_dims`` ints, or ``None``).

    Raises:
        InputError: for an unknown preset or option, or an invalid option value.
    """
    spec = get_preset(preset)
    opts = spec.default_options()
    unknown = sorted(set(options or {}) - set(opts))
    if unknown:
        raise InputError(f"unknown option(s) {unknown} for preset {preset!r}; valid: {sorted(opts)}.")
    opts.update(options or {})
    if opts["intensity"] not in spec.intensities:
        raise InputError(
            f"option 'intensity' of preset {preset!r} must be one of {spec.intensities} but is {opts['intensity']!r}."
        )
    if opts["channels"] not in (1, 3):
        raise InputError(f"option 'channels' must be 1 or 3 but is {opts['channels']!r}.")
    opts["spatial_size"] = _spatial_size(opts["spatial_size"], spec.spatial_dims)
    if opts["intensity"] in _WINDOWS:
        _check_window(opts, _WINDOWS[opts["intensity"]])
    return opts


# the intensities that need a 'window' option, and what it must hold
_WINDOWS = {"window": "[center, width > 0]", "ct_window": "[center HU, width HU > 0]"}


def _spatial_size(size: Any, dims: int) -> list[int] | None:
    """The ``spatial_size`` option as ``dims`` positive ints (one int: the same on every axis)."""
    if size is None:
        return None
    full = [size] * dims if isinstance(size, int) else size
    if len(full) != dims or not all(isinstance(s, int) and s > 0 for s in full):
        raise InputError(f"option 'spatial_size' must be {dims} positive ints but is {size!r}.")
    return list(full)


def build_transforms(preset: str, options: Mapping[str, Any] | None = None, train: bool = False) -> Compose:
    """Builds the MONAI transform chain of a modality preset.

    Output of the chain for one item: ``"image"`` float32 tensor (C, H, W) or (C, H, W, D),
    ``"label"`` LongTensor scalar (single-label) or float tensor (L,) (multi-label), and
    ``"id"`` plus every other key passed through.

    The steps follow the preset's specification (:mod:`lilaw_med.data.presets`) and options:
    whole-slide patches for a preset with ``patches``; ``orientation``, ``pixdim`` and
    ``resize: crop_or_pad`` where a preset declares them; a channel change when the ``channels``
    option differs from the channels the preset reads.

    Args:
        preset: a registered preset (e.g. ``"radiology_2d"``, ``"radiology_3d"``, ``"pathology"``).
        options: overrides of :func:`preset_defaults`; unknown keys are an error.
        train: adds the augmentations switched on in ``options`` (all off by default).

    Returns:
        The ``Compose`` to apply to datalist items.

    Example::

        chain = build_transforms("radiology_2d", {"spatial_size": 224}, train=True)
        item = chain(datalist.training[0])  # {"image": (1, 224, 224) float32, "label": tensor(1), "id": ...}

    Raises:
        InputError: for an unknown preset or option, or an invalid option value.
    """
    spec = get_preset(preset)
    opts = resolve_options(preset, options)
    dims = spec.spatial_dims
    keys = "image"
    loader = LoadMedicalImaged(
        keys,
        voi_lut=opts["intensity"] == "dicom_window",
        invert_monochrome1=bool(opts.get("invert_monochrome1", True)),
        ensure_channel_first=True,
    )
    chain: list[Any] = [
        LoadImageOrPatchd(keys, loader) if spec.patches else loader,
        PrepareChannelsd(keys, spatial_dims=dims, channels=spec.channels),
    ]
    if opts.get("orientation"):
        # explicit RAS labels: MONAI's default is changing and warns about it
        chain.append(OrientIfNeededd(keys, axcodes=opts["orientation"], labels=(("L", "R"), ("P", "A"), ("I", "S"))))
    if opts.get("pixdim"):
        chain.append(Spacingd(keys, pixdim=opts["pixdim"], mode="bilinear"))

    chain.extend(_resize_and_scale(keys, opts))
    if opts["channels"] != spec.channels:
        chain.append(PrepareChannelsd(keys, spatial_dims=dims, channels=opts["channels"]))
    chain.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    chain.append(CastLabeld("label", multi_label=bool(opts["multi_label"])))
    chain.append(FillNoned(("group",)))
    chain.append(DeleteItemsd(RECORD_KEYS))  # the record of a relabel: only some items carry it
    if train:
        chain.extend(_augmentations(keys, opts, dims))
    return Compose(chain)


def _resize_and_scale(keys: str, opts: Mapping[str, Any]) -> list[Any]:
    """The resize and the intensity scaling, in the order docs/data.md ("resize and scale") gives: percentile
    scaling runs on the smaller grid (ResizeScalePercentilesd); any other scaling after the resize."""
    size = opts["spatial_size"]
    intensity = _intensity(keys, opts)
    if size is None:
        return intensity
    if opts.get("resize") == "crop_or_pad":
        return [ResizeWithPadOrCropd(keys, spatial_size=size), *intensity]
    resize = Resized(keys, spatial_size=size, mode=opts["resize_mode"])
    if intensity and isinstance(intensity[0], ScaleIntensityPercentilesd):
        return [ResizeScalePercentilesd(keys, resize, intensity[0])]
    return [resize, *intensity]


def _intensity(keys: str, opts: Mapping[str, Any]) -> list[Any]:
    """The intensity scaling named by the ``intensity`` option (none for ``"none"``)."""
    intensity = opts["intensity"]
    if intensity == "percentile":
        lo, hi = opts["percentiles"]
        return [ScaleIntensityPercentilesd(keys, lower=lo, upper=hi, b_min=0.0, b_max=1.0, clip=True)]
    if intensity in ("window", "ct_window"):
        center, width = (float(v) for v in opts["window"])
        return [
            ScaleIntensityRanged(
                keys, a_min=center - width / 2, a_max=center + width / 2, b_min=0.0, b_max=1.0, clip=True
            )
        ]
    if intensity in ("minmax", "dicom_window"):
        return [ScaleIntensityd(keys, minv=0.0, maxv=1.0)]
    if intensity == "scale":
        return [ScaleIntensityRanged(keys, a_min=0.0, a_max=255.0, b_min=0.0, b_max=1.0, clip=True)]
    return []


def _augmentations(keys: str, opts: Mapping[str, Any], dims: int) -> list[Any]:
    """The random augmentations switched on in the options, last in the chain (after the cached part)."""
    chain: list[Any] = []
    if opts["flip"]:
        chain.extend(RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(dims))
    if opts["rotate90"]:
        chain.append(RandRotate90d(keys, prob=0.5, max_k=3, spatial_axes=(0, 1)))
    if opts["affine"]:
        rad = float(np.deg2rad(opts["affine_rotate_deg"]))
        rotate = (rad,) if dims == 2 else (rad, rad, rad)
        chain.append(
            RandAffined(
                keys, prob=0.5, rotate_range=rotate, scale_range=(float(opts["affine_scale"]),) * dims,
                padding_mode="border",
            )
        )
    if chain:
        chain.append(EnsureTyped(keys, dtype=torch.float32, track_meta=False))
    return chain


class LoadImageOrPatchd(MapTransform):
    """Loads a whole-slide patch for items with a ``location``, else the image file.

    Args:
        keys: the image key.
        loader: the file loader (a :class:`~lilaw_med.data.readers.LoadMedicalImaged`).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self, keys: KeysCollection, loader: LoadMedicalImaged, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.loader = loader
        self.patch_loader = LoadWSIPatchd(keys, allow_missing_keys=allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        return self.patch_loader(data) if "location" in data else self.loader(data)


def percentiles(arr: np.ndarray, qs: Sequence[float]) -> list[float]:
    """Exact percentiles of an array, as ``np.percentile(arr, qs)`` (its default ``linear`` method).

    Percentiles near the ends (such as 0.5 and 99.5) need only a few order statistics from each
    tail: a threshold from a sorted subsample (4k-8k values below 1M, about 16k above) picks the
    candidates of each tail (one comparison pass), their count proves the wanted ranks lie among
    them, and only the candidates are partitioned. When the proof fails (ties, an unlucky subsample, a percentile
    near the middle, NaN values), the whole array is partitioned by ``np.percentile``.

    Args:
        arr: any shape, real values; flattened.
        qs: percentiles in [0, 100].

    Returns:
        One float per percentile, in the order given.
    """
    flat = np.ravel(arr)
    n = flat.size
    if n < 8192 or (flat.dtype.kind == "f" and np.isnan(flat).any()):
        return [float(v) for v in np.percentile(flat, list(qs))]
    # 4k-8k values below 1M, about 16k above: sorting the sample must stay cheap against one pass over the array
    sample = np.sort(flat[:: max(1, n // (16384 if n >= 1 << 20 else 4096))])
    return [_percentile(flat, sample, float(q)) for q in qs]


def _percentile(flat: np.ndarray, sample: np.ndarray, q: float) -> float:
    """One percentile of ``flat`` (see :func:`percentiles`), its order statistics from a tail's candidates."""
    n = flat.size
    h = (n - 1) * q / 100.0
    k = int(np.floor(h))
    ranks = [k, min(k + 1, n - 1)]
    cand, idx = _tail_candidates(flat, sample, k, ranks)
    if min(idx) < 0 or max(idx) >= cand.size:  # the candidates do not hold the ranks: all values
        cand, idx = flat, ranks
    part = np.partition(cand, sorted(set(idx)))
    lo, hi = float(part[idx[0]]), float(part[idx[1]])
    return float(np.percentile([lo, hi], 100.0 * (h - k))) if hi != lo else lo


def _tail_candidates(
    flat: np.ndarray, sample: np.ndarray, k: int, ranks: list[int]
) -> tuple[np.ndarray, list[int]]:
    """The values of the tail that should hold ``ranks`` (cut by the sorted ``sample``) and the ranks within
    them; all values and ``ranks`` for a percentile away from both tails."""
    n = flat.size
    if max(ranks) < n // 8:  # lower tail: the smallest values
        cut = sample[min(len(sample) - 1, int(2 * (k + 2) / n * len(sample)) + 8)]
        return flat[flat <= cut], ranks
    if min(ranks) > n - 1 - n // 8:  # upper tail: the largest values
        cut = sample[max(0, len(sample) - 1 - int(2 * (n - k + 1) / n * len(sample)) - 8)]
        cand = flat[flat >= cut]
        return cand, [r - (n - cand.size) for r in ranks]
    return flat, ranks


class ScaleIntensityPercentilesd(MapTransform):
    """Scales intensities from the ``lower``-``upper`` percentile range to ``[b_min, b_max]``.

    The same result as MONAI's ``ScaleIntensityRangePercentilesd`` (``relative=False``,
    ``channel_wise=False``; linear interpolation between order statistics, float32 output) to
    float32 rounding, at a fraction of the cost: MONAI calls ``torch.quantile`` once per
    percentile, each a full sort of the image, where one ``np.percentile`` call partitions the
    array once for both percentiles (timings in docs/data.md section 8). Like MONAI's transform, an image whose two percentiles are equal
    is shifted (``x - lower_value + b_min``), not scaled.

    Args:
        keys: the image keys.
        lower: the lower percentile, in [0, 100].
        upper: the upper percentile, in [0, 100].
        b_min: the output value of the lower percentile.
        b_max: the output value of the upper percentile.
        clip: clip the output to ``[b_min, b_max]``.
        allow_missing_keys: skip missing keys.

    Raises:
        InputError: when a percentile lies outside [0, 100].
    """

    def __init__(
        self,
        keys: KeysCollection,
        lower: float,
        upper: float,
        b_min: float = 0.0,
        b_max: float = 1.0,
        clip: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        for name, q in (("lower", lower), ("upper", upper)):
            if not 0.0 <= float(q) <= 100.0:
                raise InputError(f"percentile {name} must lie in [0, 100] but is {q}.")
        self.lower, self.upper = float(lower), float(upper)
        self.b_min, self.b_max = float(b_min), float(b_max)
        self.clip = clip

    def scale(self, img: Any, clip: bool | None = None) -> Any:
        """Scales one image (numpy array or tensor, any shape); returns the input's type, float32.

        Args:
            img: the image; a ``MetaTensor`` keeps its metadata.
            clip: overrides the transform's ``clip`` (``None``: the transform's).
        """
        clip = self.clip if clip is None else clip
        arr = img.detach().cpu().numpy() if isinstance(img, torch.Tensor) else np.asarray(img)
        a_min, a_max = percentiles(arr, (self.lower, self.upper))
        if a_max != a_min:
            scale = (self.b_max - self.b_min) / (a_max - a_min)
            out = np.multiply(arr, np.float32(scale), dtype=np.float32)  # one new buffer, the rest in place
            out += np.float32(self.b_min - a_min * scale)
            if clip:
                np.clip(out, self.b_min, self.b_max, out=out)
        else:  # MONAI's rule for a constant range: shift only, no scaling and no clip
            out = np.subtract(arr, np.float32(a_min - self.b_min), dtype=np.float32)
        return convert_to_dst_type(out, dst=img, dtype=torch.float32 if isinstance(img, torch.Tensor) else np.float32)[0]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.scale(d[key])
        return d


class ResizeScalePercentilesd(MapTransform):
    """Resizes and scales by percentiles, the percentiles taken on the smaller grid of the two.

    The rule (docs/data.md): when the resize enlarges an image (more output voxels than input
    voxels, e.g. a 40^3 volume to 96^3), the percentiles are those of the stored voxels and the
    linear map ``b_min + (x - lower) * (b_max - b_min) / (upper - lower)`` is applied before
    resizing, the clip to ``[b_min, b_max]`` after it; otherwise the image is resized first and
    scaled after (percentiles of the resized image). Resizing (nearest, linear, area, cubic) is a
    linear map whose weights sum to one, so it commutes with the affine intensity map: the
    enlarging path gives ``clip(a * resize(x) + b)`` exactly as resize-then-scale does, except that
    ``lower``/``upper`` come from the stored voxels instead of the interpolated ones (for the sample
    volumes at most 0.7% of the output range; see the test). Sorting the stored voxels
    costs a fraction of sorting the enlarged image (64k against 885k values for 40^3 -> 96^3).

    Args:
        keys: the image keys.
        resize: MONAI's ``Resized`` for the same keys.
        scale: the percentile scaling (its ``clip`` is applied last).
        allow_missing_keys: skip missing keys.
    """

    def __init__(
        self, keys: KeysCollection, resize: Resized, scale: ScaleIntensityPercentilesd, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.resize = resize
        self.scale = scale
        self._size = [int(v) for v in ensure_tuple(resize.resizer.spatial_size)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = d[key]
            if int(np.prod(img.shape[1:])) < int(np.prod(self._size)):  # enlarging: scale the stored voxels
                d[key] = self.scale.scale(img, clip=False)
                d = dict(self.resize(d))
                if self.scale.clip:
                    d[key] = torch.clamp_(d[key], self.scale.b_min, self.scale.b_max) if isinstance(
                        d[key], torch.Tensor) else np.clip(d[key], self.scale.b_min, self.scale.b_max)
            else:
                d = dict(self.resize(d))
                d[key] = self.scale.scale(d[key])
        return d


class OrientIfNeededd(Orientationd):
    """MONAI's ``Orientationd``, skipped for an image whose affine already has the wanted axis codes.

    Reorienting a volume that is already oriented copies nothing but still costs MONAI time (the
    affine's orientation, a no-op flip and transpose, metadata; docs/data.md sections 3 and 8); the chain
    drops the metadata at its end (``EnsureTyped(track_meta=False)``), so skipping it gives the same
    pixels. Images without an affine (not a ``MetaTensor``) go to MONAI, which handles them as it
    does. The axis codes of each distinct affine are computed once (a data set's volumes share a
    handful of affines).
    """

    _CACHE_SIZE: ClassVar[int] = 4096

    def _axcodes(self, affine: Any) -> tuple[str, ...]:
        """The axis codes of an affine (``aff2axcodes`` with the transform's labels), cached by its bytes."""

        a = np.asarray(affine, dtype=np.float64)
        key = a.tobytes()
        cache = self.__dict__.setdefault("_axcodes_cache", {})
        codes = cache.get(key)
        if codes is None:
            if len(cache) >= self._CACHE_SIZE:
                cache.clear()
            codes = cache[key] = tuple(aff2axcodes(a, labels=self.ornt_transform.labels))
        return codes

    def __call__(self, data: Mapping[Hashable, Any], lazy: bool | None = None) -> dict[Hashable, Any]:

        d = dict(data)
        wanted = tuple(self.ornt_transform.axcodes)
        for key in self.key_iterator(d):
            img = d[key]
            if not isinstance(img, MetaTensor) or self._axcodes(img.affine) != wanted:
                return super().__call__(d, lazy)
        return d


class PrepareChannelsd(MapTransform):
    """Checks the dimensionality and sets the channel count of a channel-first image.

    Trailing singleton spatial axes beyond ``spatial_dims`` are dropped (a 2D NIfTI is stored as
    (W, H, 1)); colour images become grey by averaging (``channels=1``), grey images are repeated
    (``channels=3``), an alpha channel is dropped.

    Args:
        keys: the image keys.
        spatial_dims: the expected number of spatial dimensions (2 or 3).
        channels: the output channel count (1 or 3).
        allow_missing_keys: skip missing keys.

    Raises:
        InputError: (when called) for an image with another number of spatial dimensions, naming
            the item's id and file.
    """

    def __init__(
        self, keys: KeysCollection, spatial_dims: int, channels: int, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.spatial_dims = spatial_dims
        self.channels = channels

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            img = self._spatial(d[key], d, key)
            if img.shape[0] == 4:  # RGBA
                img = img[:3]
            d[key] = self._channels(img, d)
        return d

    def _spatial(self, img: Any, d: Mapping[Hashable, Any], key: Hashable) -> Any:
        """The image without trailing singleton axes beyond ``spatial_dims``; raises for another dimensionality."""
        while img.ndim - 1 > self.spatial_dims and img.shape[-1] == 1:
            img = img[..., 0]
        if img.ndim - 1 != self.spatial_dims:
            raise InputError(
                f"item {d.get('id', '?')} ({_filename(img, d.get(key))}): expected a {self.spatial_dims}D image "
                f"but got spatial shape {tuple(img.shape[1:])} with {img.shape[0]} channel(s)."
            )
        return img

    def _channels(self, img: Any, d: Mapping[Hashable, Any]) -> Any:
        """Colour to grey by the mean (``channels=1``), grey repeated (``channels=3``)."""
        c = img.shape[0]
        tensor = isinstance(img, torch.Tensor)
        if self.channels == 1 and c != 1:
            return img.mean(dim=0, keepdim=True) if tensor else img.mean(0, keepdims=True)
        if self.channels == 3 and c == 1:
            return img.repeat(3, *([1] * self.spatial_dims)) if tensor else np.repeat(img, 3, 0)
        if self.channels == 3 and c != 3:
            raise InputError(f"item {d.get('id', '?')}: expected 1 or 3 channels but got {c}.")
        return img


class CastLabeld(MapTransform):
    """Label to tensor: LongTensor scalar (single-label, -1 when missing) or float (L,) (multi-label).

    Args:
        keys: the label keys.
        multi_label: labels are 0/1 lists.
        allow_missing_keys: skip missing keys (the output then has no label).
    """

    def __init__(
        self, keys: KeysCollection, multi_label: bool = False, allow_missing_keys: bool = True
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.multi_label = multi_label

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            value = d[key]
            if self.multi_label:
                if value is None:
                    raise InputError(
                        f"item {d.get('id', '?')}: a multi-label item needs a label list but has none."
                    )
                d[key] = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
            else:
                if isinstance(value, (list, tuple)):
                    raise InputError(
                        f"item {d.get('id', '?')}: label {value!r} is a list; set option 'multi_label' for "
                        f"multi-label data."
                    )
                d[key] = torch.as_tensor(-1 if value is None else int(value), dtype=torch.long)
        return d


class FillNoned(MapTransform):
    """Replaces ``None`` values by ``""`` so that PyTorch's collate accepts them (e.g. ``group``)."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = True) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            if d[key] is None:
                d[key] = ""
        return d


def _filename(img: Any, fallback: Any) -> str:
    meta = getattr(img, "meta", None)
    if isinstance(meta, dict) and meta.get("filename_or_obj"):
        return str(meta["filename_or_obj"])
    return str(fallback)
