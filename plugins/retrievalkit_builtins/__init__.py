"""The built-in components of retrievalkit: each module is one plugin, registered through the
``retrievalkit`` entry-point group in pyproject.toml exactly as a third party's would be."""
