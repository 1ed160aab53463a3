"""The fitting machinery: how a network or a head is fitted and scored, nothing about studies.

The training loop with checkpoints (train), the cached-feature probe (probe, features), the
one scoring path (evaluate), parameter groups and schedules (optim), precision and CPU fast
paths chosen by measurement (hardware, kernels), DDP (dist), batched augmentation (augment)
and the run context every fit reads (context). It imports records and parts (config, record,
regimes, models, net, data), never the study, the report or the face above it.
"""
