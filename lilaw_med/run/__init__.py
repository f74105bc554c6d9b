"""What a finished (or interrupted) run is on disk, readable without ignite or MONAI's engines.

The bottom layer of the package: the modules here import only numpy, torch and the standard
library, so the audit and any other reader of a run folder need neither the training engine nor
its handlers.

* :mod:`~lilaw_med.run.dynamics_format`: the per-item training dynamics' file format and reader;
* :mod:`~lilaw_med.run.checkpoint_format`: the self-verifying checkpoint file, its folder's
  ``index.json`` and retention, and the checks a resume trusts.
"""

from lilaw_med.run.dynamics_format import Dynamics, load_dynamics

__all__ = ["Dynamics", "load_dynamics"]
