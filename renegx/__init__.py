"""renegx: learned negative embeddings for text-to-image diffusion (ReNeg training, export, inference)."""

__version__ = "0.1.0"
