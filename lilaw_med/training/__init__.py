"""Building and running training: trainer assembly, the run folder, checkpoints and resume, distributed set-up."""
