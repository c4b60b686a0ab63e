"""Built-in losses (one module per component)."""
