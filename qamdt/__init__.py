"""QA-MDT: quality-aware masked diffusion transformer for text-to-music generation."""

__version__ = "0.1.0"
