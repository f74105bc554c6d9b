"""What a finished run is on disk, readable without ignite or MONAI's engines.

The bottom layer of the package: the modules here import only numpy and the standard library, so
the audit and any other reader of a run folder need neither the training engine nor its handlers.
:mod:`lilaw_med.run.dynamics_format` holds the per-item training dynamics' file format and reader.
"""

from lilaw_med.run.dynamics_format import Dynamics, load_dynamics

__all__ = ["Dynamics", "load_dynamics"]
