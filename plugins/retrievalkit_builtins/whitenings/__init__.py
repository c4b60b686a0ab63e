"""Built-in whitenings (one module per component)."""
