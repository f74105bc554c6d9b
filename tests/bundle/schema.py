"""The metadata schemas the bundle tests validate against, offline.

``bundle_metadata_schema.json`` beside this file is written from the MONAI Bundle Specification
(see its ``$comment``), so that MONAI's ``verify_metadata`` runs in every test run without a
download; ``$LILAW_BUNDLE_SCHEMA``, when set, adds a local copy of the schema MONAI publishes.
"""

from __future__ import annotations

from pathlib import Path

from lilaw_med.bundle.metadata import schema_path_from_env

SCHEMA_COPY = Path(__file__).with_name("bundle_metadata_schema.json")


def metadata_schemas() -> list[Path]:
    """The shipped test schema, then the user's copy of MONAI's own when ``$LILAW_BUNDLE_SCHEMA`` names one."""
    user = schema_path_from_env()
    return [SCHEMA_COPY] + ([user] if user is not None else [])
