"""Latent stack and the quality-aware masked diffusion transformer."""
