"""What a finished (or interrupted) run is on disk, readable without ignite or MONAI's engines.

:mod:`~lilaw_med.run.checkpoint_format`: the self-verifying checkpoint file, its folder's
``index.json`` and retention, and the checks a resume trusts.
"""
