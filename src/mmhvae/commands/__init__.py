"""Command-line verbs of ``mmhvae`` (see :mod:`mmhvae.cli`)."""
