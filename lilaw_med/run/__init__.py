"""What a finished (or interrupted) run is on disk, readable without ignite or MONAI's engines.

The layer above core and data (docs/ARCHITECTURE.md): the modules here import neither ignite nor
MONAI's engines, so the audit and any other reader of a run folder need neither the training engine nor
its handlers.

* :mod:`~lilaw_med.run.run_dir`: the run folder's file names (:class:`RunDir`) and its lock;
* :mod:`~lilaw_med.run.config`: the typed, validated config (:class:`Config`) and its sections;
* :mod:`~lilaw_med.run.config_schema`: how a key is declared, checked and compared (``config_differences``);
* :mod:`~lilaw_med.run.config_yaml`: config YAML read safely, and ``--set`` overrides;
* :mod:`~lilaw_med.run.transforms`: the run's transform options and its one evaluation chain;
* :mod:`~lilaw_med.run.model_file`: the model file and the best-else-final rule;
* :mod:`~lilaw_med.run.summary`: ``summary.json`` read once (:class:`RunSummary`) and which calibration goes with a model;
* :mod:`~lilaw_med.run.dynamics_format`: the per-item training dynamics' file format and reader;
* :mod:`~lilaw_med.run.checkpoint_format`: the self-verifying checkpoint file, its folder's
  ``index.json`` and retention, and the checks a resume trusts.
"""

from lilaw_med.run.dynamics_format import Dynamics, load_dynamics

__all__ = ["Dynamics", "load_dynamics"]
