"""transferlab: honest, fast, resumable transfer-learning studies."""
__version__ = "0.1.0"
