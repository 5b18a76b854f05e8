"""Diffusion schedules, losses and condition dropping on top of diffusers schedulers."""
