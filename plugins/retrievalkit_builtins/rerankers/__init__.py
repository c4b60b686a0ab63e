"""Built-in re-rankers (one module per component)."""
