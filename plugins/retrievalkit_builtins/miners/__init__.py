"""Built-in miners (one module per component)."""
