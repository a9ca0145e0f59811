"""Moved to :mod:`mmhvae.checkpoint` (training and inference both read checkpoints); kept importable."""

from mmhvae.checkpoint import *  # noqa: F401,F403
from mmhvae.checkpoint import (  # noqa: F401
    CheckpointError, CheckpointNotFoundError, check_resume_config, check_weights, latest_state, load_generator,
    load_state, read_generator, read_metadata, remove_stale_temporaries, resolve_checkpoint, save_generator,
    save_state, truncate_log,
)
