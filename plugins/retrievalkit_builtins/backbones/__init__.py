"""Built-in backbones (one module per component)."""
