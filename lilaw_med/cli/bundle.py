"""``lilaw-med bundle export | overlay | verify``: MONAI bundles from lilaw-med configs and runs.

Errors in the user's input (``InputError``, ``FileNotFoundError``, ``FileExistsError``, ``OSError``) become
:class:`~lilaw_med.cli.UserError`, printed as one line without a traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lilaw_med.cli import UserError, user_errors

if TYPE_CHECKING:  # the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.overlay import BundleLayout

__all__ = ["register"]

logger = logging.getLogger(__name__)


def _parse_shape(text: str | None) -> list[int] | None:
    if not text:
        return None
    try:
        shape = [int(v) for v in text.replace("x", ",").split(",") if v.strip()]
    except ValueError:
        raise UserError(f"--spatial-shape {text!r} must be integers like 64,64 or 32x32x32.") from None
    if not shape or any(v < 1 for v in shape):
        raise UserError(f"--spatial-shape {text!r} must be positive integers like 64,64 or 32x32x32.")
    return shape


def _cmd_export(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.command import bundle_run_command
    from lilaw_med.bundle.configs import TRAIN_FILES
    from lilaw_med.bundle.export import export_bundle
    from lilaw_med.run.config import load_config
    from lilaw_med.run.run_dir import RunDir

    with user_errors():
        run = RunDir(args.run) if args.run else None
        if run is not None and not run.exists():
            raise UserError(f"--run {args.run}: not a lilaw-med run folder (no {RunDir.CONFIG}).")
        if not args.config and run is None:
            raise UserError(f"--config is required (or --run RUN_DIR, whose {RunDir.CONFIG} is then used).")
        config = load_config(args.config or run.config, list(args.set or []))
        result = export_bundle(
            config,
            args.out_dir,
            run_dir=args.run,
            version=args.bundle_version,
            authors=args.authors,
            spatial_shape=_parse_shape(args.spatial_shape),
            license_file=args.license,
            overwrite=args.overwrite,
            # the run's own config.yaml: relative paths are the run folder's, not this folder's
            base_dir=run.root if run is not None and not args.config else None,
        )
    print(f"bundle written to {result.root}:")
    for rel in result.files:
        print(f"  {rel}")
    if "models/model.pt" not in result.files:
        print("no --run given: models/model.pt is written when the bundle trains.")
    print(f"next: cd {result.root} && {bundle_run_command(TRAIN_FILES)}")
    return 0


def _cmd_overlay(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.overlay import find_layout, write_overlays

    with user_errors():
        target, second = _overlay_targets(args)
        if args.bundle is None:
            return _generic_overlay(args, target, second)
        layout = find_layout(
            args.bundle, train_config=args.train_config, trainer_id=args.trainer_id, loss_id=args.loss_id,
            handlers_id=args.handlers_id, val_dataset_id=args.val_dataset_id, val_batch_size=args.val_batch_size,
            ckpt_dir=args.ckpt_dir,
        )
        written, second = write_overlays(layout, target, multi_gpu=args.multi_gpu)
    _print_overlay(layout, written, second)
    return 0


def _overlay_targets(args: argparse.Namespace) -> tuple[Path, Path | None]:
    """The overlay file and, with ``--multi-gpu``, the multi-GPU override beside it; neither may exist
    unless ``--overwrite``."""
    target = Path(args.output)
    if target.is_dir():
        target = target / "lilaw_overlay.yaml"
    second = target.with_name(f"{target.stem}_multi_gpu.yaml") if args.multi_gpu else None
    for path in (target, second):
        if path is not None and path.is_file() and not args.overwrite:
            raise UserError(f"{path} exists; pass --overwrite to replace it.")
    return target, second


def _generic_overlay(args: argparse.Namespace, target: Path, second: Path | None) -> int:
    """Writes the generic overlay (model-zoo ids) without ``--bundle``, and says how to run it."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.command import bundle_run_command
    from lilaw_med.bundle.export import copy_overlay

    ids = [o for o in ("trainer_id", "loss_id", "handlers_id", "val_dataset_id", "train_config") if getattr(args, o)]
    if ids:
        raise UserError(f"--{ids[0].replace('_', '-')} needs --bundle BUNDLE_DIR.")
    written = copy_overlay(target)
    print(f"generic LiLAW overlay (model-zoo ids: loss, train#trainer, train#handlers, validate#dataset, "
          f"ckpt_dir) written to {written}")
    if second is not None:
        second = copy_overlay(second, "multi_gpu_train.yaml")
        print(f"generic multi-GPU override written to {second}")
    print("for a bundle with other ids: lilaw-med bundle overlay --bundle BUNDLE_DIR (finds them itself)")
    files = ["configs/train.json", str(written)] + ([str(second)] if second is not None else [])
    command = bundle_run_command(files, bundle_root=".", nproc=2 if second is not None else None)
    print(f"use (from the bundle folder; configs/train.yaml for a YAML bundle): {command}")
    return 0


def _print_overlay(layout: BundleLayout, written: Path, second: Path | None) -> None:
    """Says what the overlay for a bundle sets and the commands that run the bundle with it."""
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.overlay import run_command

    loss = layout.loss_id or f"{layout.trainer_id}#loss_function"
    print(f"LiLAW overlay for {layout.bundle_root} written to {written}")
    print(f"  trainer {layout.trainer_id}, loss {loss} ({'component' if layout.loss_is_component else 'expression'}), "
          f"handlers {layout.handlers_id or layout.trainer_id + '#train_handlers'}, validation dataset "
          f"{layout.val_dataset_id}, models {layout.ckpt_dir}")
    if second is not None:
        print(f"multi-GPU override written to {second}")
    print(f"run from {layout.bundle_root}:")
    print(f"  {run_command(layout, written)}")
    if second is not None:
        print(f"  {run_command(layout, written, second)}")


def _cmd_verify(args: argparse.Namespace) -> int:
    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from monai.bundle import verify_net_in_out

    # a command's modules load when it runs: the parser imports no torch or MONAI (tests/core/test_lean_imports.py)
    from lilaw_med.bundle.metadata import (
        SCHEMA_ENV_VAR,
        missing_metadata_keys,
        schema_path_from_env,
        verify_metadata_schema,
    )

    with user_errors():
        root = Path(args.bundle)
        meta_file = root / "configs" / "metadata.json"
        if not meta_file.is_file():
            raise UserError(f"{root}: not a bundle (no configs/metadata.json).")
        meta: dict[str, Any] = json.loads(meta_file.read_text(encoding="utf-8"))
        missing = missing_metadata_keys(meta)
        if missing:
            raise UserError(f"{meta_file}: missing mandatory key(s) {', '.join(missing)}.")
        print(f"{meta_file}: every mandatory key of the MONAI Bundle Specification is present")
        schema = Path(args.schema) if args.schema else schema_path_from_env()
        if schema is not None:
            verify_metadata_schema(meta_file, schema)
            print(f"{meta_file}: valid against the schema {schema}")
        else:
            print(f"schema check skipped: MONAI's metadata schema is published online only; pass --schema FILE "
                  f"or set {SCHEMA_ENV_VAR} to a local copy of {meta.get('schema', 'it')}")
        config = root / "configs" / args.config
        if not config.is_file():
            raise UserError(f"{root}: no configs/{args.config}.")
        verify_net_in_out(
            net_id="network_def", meta_file=str(meta_file), config_file=str(config), device="cpu", any=args.any
        )
        print(f"network_def of configs/{args.config}: input and output shapes and dtypes match the metadata")
    return 0


def register(subparsers: Any) -> None:
    """Adds ``bundle`` with the sub-commands ``export``, ``overlay`` and ``verify``."""
    bundle = subparsers.add_parser(
        "bundle", help="export MONAI bundles; add LiLAW to an existing bundle",
        description="MONAI bundles: export a lilaw-med config or run as a bundle, copy the LiLAW overlay for "
        "an existing classification bundle, verify a bundle.",
    )
    bundle.set_defaults(func=lambda args: (bundle.print_help(), 2)[1])
    sub = bundle.add_subparsers(dest="bundle_command", metavar="SUBCOMMAND")

    p = sub.add_parser(
        "export", help="write a MONAI bundle for a config (and the weights of a finished run)",
        description="Write a MONAI bundle: configs/metadata.json, train.yaml, evaluate.yaml, inference.yaml,\n"
        "docs/README.md, LICENSE, and models/model.pt when --run is given.\n\n"
        "examples:\n"
        "  lilaw-med bundle export --config configs/radiology_2d.yaml my_bundle\n"
        "  lilaw-med bundle export --config runs/radiology_2d-20260101-120000/config.yaml \\\n"
        "      --run runs/radiology_2d-20260101-120000 my_bundle",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", "-c", metavar="YAML",
                   help="the lilaw-med config (default with --run: the run's own config.yaml)")
    p.add_argument("--set", "-s", action="append", metavar="KEY=VALUE", help="override a config value (repeatable)")
    p.add_argument("--run", metavar="RUN_DIR", help="a finished run of this config: its best weights become models/model.pt")
    p.add_argument("out_dir", metavar="OUT_DIR", help="the bundle folder to write")
    p.add_argument("--bundle-version", default="0.1.0", help="the bundle's version (default 0.1.0)")
    p.add_argument("--authors", default="lilaw-med developers", help="the authors named in the metadata")
    p.add_argument("--spatial-shape", metavar="H,W[,D]",
                   help="the network's input size (default: data.options.spatial_size)")
    p.add_argument("--license", metavar="FILE", help="licence text to ship as LICENSE (default: Apache-2.0 notice)")
    p.add_argument("--overwrite", action="store_true", help="write into an existing non-empty folder")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "overlay", help="write the LiLAW overlay that adds LiLAW to an existing classification bundle",
        description="Write a LiLAW overlay, which adds LiLAW to a MONAI classification bundle by config merging\n"
        "(nothing in the bundle is edited); see docs/bundle.md.\n\n"
        "With --bundle, the bundle's training config (configs/train.json or .yaml) is read and the trainer,\n"
        "its loss, its train handler list, the validation dataset and the model folder are found by\n"
        "structure; the overlay then uses the bundle's own ids, and the exact monai.bundle command is\n"
        "printed. Where a piece cannot be found, the one-line error names the option that sets it.\n"
        "Without --bundle, the generic overlay for model-zoo ids is copied.\n\n"
        "examples:\n"
        "  lilaw-med bundle overlay --bundle my_bundle -o lilaw_overlay.yaml\n"
        "  lilaw-med bundle overlay --bundle my_bundle --multi-gpu --loss-id train#loss",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--bundle", "-b", metavar="BUNDLE_DIR", help="the bundle to write the overlay for")
    p.add_argument("--output", "-o", default="lilaw_overlay.yaml", metavar="PATH",
                   help="file or folder to write (default ./lilaw_overlay.yaml)")
    p.add_argument("--multi-gpu", action="store_true",
                   help="also write the multi-GPU (torchrun, DDP) override beside it: <name>_multi_gpu.yaml")
    p.add_argument("--train-config", metavar="FILE", help="the bundle's training config (default configs/train.json|yaml)")
    p.add_argument("--trainer-id", metavar="ID", help="id of the SupervisedTrainer")
    p.add_argument("--loss-id", metavar="ID", help="id of the loss to wrap (a component or a $ expression)")
    p.add_argument("--handlers-id", metavar="ID", help="id of the train handler list to append LiLAW's handlers to")
    p.add_argument("--val-dataset-id", metavar="ID", help="id of the dataset the meta step reads (validation data)")
    p.add_argument("--val-batch-size", type=int, metavar="N", help="the meta step's batch size (default: the validation loader's)")
    p.add_argument("--ckpt-dir", metavar="VALUE", help="where lilaw.pt goes, as a config value (default: the bundle's model folder)")
    p.add_argument("--overwrite", action="store_true", help="replace existing files")
    p.set_defaults(func=_cmd_overlay)

    p = sub.add_parser(
        "verify", help="check a bundle: mandatory metadata keys, schema (with a local copy), network shapes",
        description="Check a bundle: every mandatory metadata key; MONAI's verify_metadata against a LOCAL copy of\n"
        "MONAI's schema (--schema or $LILAW_BUNDLE_SCHEMA; skipped otherwise); MONAI's verify_net_in_out.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("bundle", metavar="BUNDLE_DIR", help="the bundle folder")
    p.add_argument("--schema", metavar="FILE", help="a local copy of MONAI's metadata schema")
    p.add_argument("--config", default="inference.yaml", help="the config holding network_def (default inference.yaml)")
    p.add_argument("--any", type=int, default=64,
                   help="size used for a '*' (any size) input dimension in the network check (default 64)")
    p.set_defaults(func=_cmd_verify)
