"""The dashboard's widgets, one module per family, each with its own DEFAULT_CSS."""
