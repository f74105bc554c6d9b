"""Data commands: ``sample-data``, ``add-noise``, ``validate-data``, ``import-npz``.

Parses and validates arguments, calls :mod:`lilaw_med.data` inside :func:`~lilaw_med.cli.user_errors`
(which turns the user's errors into one-line messages); no logic of its own.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from lilaw_med.cli import UserError, user_errors
from lilaw_med.data.noise import NOISE_KINDS
from lilaw_med.data.presets import PRESETS, get_preset

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Adds the data commands to the ``lilaw-med`` parser."""
    p = subparsers.add_parser(
        "sample-data",
        help="write a small synthetic data set (DICOM, NIfTI, PNG tiles, a tiled TIFF slide) with datalists",
        description="Writes deterministic synthetic sample data with datalists and injected, recorded label noise.",
    )
    p.add_argument("dir", type=Path, help="output folder (e.g. sample_data/generated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-2d", type=int, default=300, help="number of 2D DICOM images (default 300)")
    p.add_argument("--n-3d", type=int, default=200, help="number of 3D NIfTI volumes (default 200)")
    p.add_argument("--n-tiles", type=int, default=300, help="number of pathology tiles (default 300)")
    p.add_argument(
        "--noise-rate", type=float, default=0.2, help="symmetric noise rate in training/validation"
    )
    p.set_defaults(func=_sample_data)

    p = subparsers.add_parser(
        "add-noise",
        help="write a noisy copy of a datalist and a sidecar with the true labels",
        description="Injects simulated label noise (symmetric, uniform, asymmetric, instance-dependent) into a datalist.",
    )
    p.add_argument("datalist", type=Path, help="datalist .json or .csv")
    p.add_argument("--kind", choices=NOISE_KINDS, default="symmetric",
                   help="symmetric: RATE is the share of wrong labels; uniform: the LiLAW prototype's "
                   "noise, RATE is the share redrawn from all K classes (wrong: RATE * (K-1) / K)")
    p.add_argument("--rate", type=float, default=None, help="noise rate (required unless --transition)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", type=Path, required=True, help="noisy datalist .json to write")
    p.add_argument(
        "--splits",
        default="training,validation",
        help="comma-separated splits to corrupt (default training,validation)",
    )
    p.add_argument("--transition", help="asymmetric: K x K matrix as JSON or a .json file (rows sum to 1)")
    p.add_argument(
        "--pairs", help="asymmetric: class pairs flipped with --rate, e.g. '0:1,1:0' (default i->i+1)"
    )
    p.add_argument("--class-names", help="comma-separated class names when labels are names")
    p.set_defaults(func=_add_noise)

    p = subparsers.add_parser(
        "validate-data",
        help="open every item of a datalist and report what is wrong",
        description="Pre-flight check: missing/unreadable/truncated files, wrong dimensionality, NaN/inf, "
        "bad labels, duplicate ids. Exit status 1 when problems are found.",
    )
    p.add_argument("datalist", type=Path)
    p.add_argument("--preset", choices=tuple(PRESETS), help="checks the dimensionality the preset expects")
    p.add_argument(
        "--dims", type=int, choices=(2, 3), help="expected spatial dimensions (overrides --preset)"
    )
    p.add_argument("--class-names", help="comma-separated class names")
    p.add_argument("--num-classes", type=int, help="labels must be below this")
    p.add_argument("--multi-label", action="store_true")
    p.add_argument("--decode", action="store_true", help="decode all pixel data (slower, finds more)")
    p.add_argument("--cache-dir", type=Path, help="manifest cache folder (default ~/.cache/lilaw-med)")
    p.add_argument("--no-cache", action="store_true", help="do not read or write the manifest cache")
    p.add_argument("--report", type=Path, help="also write the problems as CSV here")
    p.set_defaults(func=_validate_data)

    p = subparsers.add_parser(
        "import-npz",
        help="write MedMNIST-style npz arrays as DICOM / NIfTI / PNG files with a datalist",
        description="Converts a MedMNIST-style .npz (train/val/test _images and _labels) into real image files "
        "and a decathlon-style datalist.json (3D volumes are always NIfTI).",
    )
    p.add_argument("npz", type=Path)
    p.add_argument("--format", choices=("dicom", "nifti", "png"), default="png")
    p.add_argument("-o", "--output", type=Path, required=True, help="output folder")
    p.add_argument("--class-names", help="comma-separated class names")
    p.add_argument("--limit", type=int, help="at most this many images per split (quick experiments)")
    p.add_argument("--modality", default="OT", help="DICOM Modality tag (default OT)")
    p.set_defaults(func=_import_npz)


def _names(value: str | None) -> list[str] | None:
    if not value:
        return None
    names = [n.strip() for n in value.split(",") if n.strip()]
    if not names:
        raise UserError("--class-names is empty")
    return names


def _sample_data(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.data.sample import write_sample_data

    with user_errors():
        paths = write_sample_data(
            args.dir,
            seed=args.seed,
            n_2d=args.n_2d,
            n_3d=args.n_3d,
            n_tiles=args.n_tiles,
            noise_rate=args.noise_rate,
        )
    for name, path in paths.items():
        print(f"{name:13s} {path}")
    return 0


def _parse_transition(value: str) -> Any:
    try:
        text = (
            Path(value).read_text(encoding="utf-8")
            if value.endswith(".json") and Path(value).is_file()
            else value
        )
    except UnicodeDecodeError as e:
        raise UserError(f"--transition file {value} is not UTF-8 text: {e.reason} at byte {e.start}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(
            f"--transition must be a JSON matrix like [[0.8,0.2],[0.3,0.7]] or a .json file: {e}"
        ) from e


def _parse_pairs(value: str) -> dict[int, int]:
    pairs = {}
    for part in value.split(","):
        try:
            a, b = part.split(":")
            pairs[int(a)] = int(b)
        except ValueError as e:
            raise UserError(f"--pairs must look like '0:1,1:0' but has {part!r}") from e
    return pairs


def _add_noise(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.data.noise import add_noise_to_datalist

    with user_errors():
        splits = tuple(s.strip() for s in args.splits.split(",") if s.strip())
        transition = _parse_transition(args.transition) if args.transition else None
        pairs = _parse_pairs(args.pairs) if args.pairs else None
        if args.rate is None and transition is None:
            raise UserError("give --rate (or --transition for --kind asymmetric)")
        if transition is not None and args.kind != "asymmetric":
            raise UserError("--transition applies to --kind asymmetric only")
        res = add_noise_to_datalist(
            args.datalist,
            args.output,
            kind=args.kind,
            rate=args.rate,
            seed=args.seed,
            splits=splits,
            transition=transition,
            pairs=pairs,
            class_names=_names(args.class_names),
        )
    for split, rate in res.actual_rate.items():
        print(f"{split:10s} {res.num_flipped[split]} labels changed, actual noise rate {rate:.3f}")
    print(f"wrote {res.datalist} and {res.sidecar}")
    return 0


def _validate_data(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.data.datalist import load_datalist
    from lilaw_med.data.preflight import check_datalist, default_cache_dir, write_problems_csv

    with user_errors():
        dl = load_datalist(
            args.datalist,
            class_names=_names(args.class_names),
            multi_label=args.multi_label,
            require_training=False,
            strict=False,
        )
        dims = args.dims or (get_preset(args.preset).spatial_dims if args.preset else None)
        cache = None if args.no_cache else (args.cache_dir or default_cache_dir())
        problems = check_datalist(dl, dims, args.num_classes, decode=args.decode, cache_dir=cache, progress=True)
        n = sum(1 for _ in dl.iter_items())
        if args.report:
            write_problems_csv(problems, args.report)
    if not problems:
        print(
            f"OK: {n} items checked ({len(dl.training)} training, {len(dl.validation)} validation, {len(dl.test)} test), no problems"
        )
        return 0
    for p in problems:
        print(p)
    print(f"{len(problems)} problem(s) in {n} items" + (f"; written to {args.report}" if args.report else ""))
    return 1


def _import_npz(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.data.npz_import import import_npz

    # import_npz raises an InputError naming the arrays it misses (not a KeyError)
    with user_errors():
        path = import_npz(
            args.npz,
            args.output,
            fmt=args.format,
            class_names=_names(args.class_names),
            limit=args.limit,
            modality=args.modality,
        )
    print(f"wrote {path}")
    return 0
