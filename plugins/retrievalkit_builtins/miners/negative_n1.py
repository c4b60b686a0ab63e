"""Not implemented yet (placeholder so the entry point loads)."""
