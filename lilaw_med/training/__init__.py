"""The training engine: trainer assembly, the training run and its end, validation and evaluation, checkpoints and resume, distributed set-up."""
