"""The end-to-end demo: corpus to report in one resumable command (``qamdt demo``)."""
