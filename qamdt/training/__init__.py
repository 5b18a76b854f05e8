"""Training loops: the VAE and the quality-aware MDT."""
