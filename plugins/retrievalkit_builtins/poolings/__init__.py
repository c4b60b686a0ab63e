"""Built-in poolings (one module per component)."""
