"""Local engines: one module per model family, with its speed settings beside it."""
