"""The ``qamdt`` command line."""
