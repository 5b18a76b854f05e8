"""Evaluation of generated music: metrics, feature extractors, the evaluation run and its report.

Modules: ``metrics`` (Frechet distance, paired KL, inception score), ``embedders`` (offline
features from the project's own CLAP and tagger), ``audioldm_eval_backend`` (optional
VGGish / PANNs scores), ``evaluate`` (the run) and ``report`` (JSON and HTML).
"""
