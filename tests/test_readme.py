"""The README's "LiLAW in your own MONAI script" example runs as written."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def _example_code() -> str:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## LiLAW in your own MONAI script", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert blocks, "the README section has no python example"
    return "\n".join(blocks)


def test_readme_monai_example_trains_and_moves_the_scalars():
    namespace: dict = {}
    exec(compile(_example_code(), "README.md", "exec"), namespace)
    trainer, handler = namespace["trainer"], namespace["handler"]
    assert trainer.state.epoch == trainer.state.max_epochs
    # the first epoch is LiLAWLoss's default warm-up (the prototype's): no meta steps in it
    assert handler.steps == trainer.state.iteration - trainer.state.epoch_length
    assert handler.last_values["alpha"] != 2.0
