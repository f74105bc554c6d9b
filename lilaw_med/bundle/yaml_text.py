"""The one writer of a bundle config file as YAML text: a comment block, then the content."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

__all__ = ["config_yaml"]


def config_yaml(content: Mapping[str, Any], comment: str) -> str:
    """A MONAI bundle config as YAML text, with ``comment`` at the top.

    Keys keep their order (MONAI runs a config's ``run`` list in order and a reader meets the ids in
    the order they build on each other).

    Args:
        content: the config (ids -> values).
        comment: the text of the comment block, one ``#`` line per line.

    Returns:
        The file's text.
    """
    head = "".join(f"# {line}\n" if line else "#\n" for line in comment.strip().splitlines())
    return head + "\n" + yaml.safe_dump(dict(content), sort_keys=False, default_flow_style=False, width=110)
