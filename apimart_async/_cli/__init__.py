"""Layer 6, the `apimart-async` command line: commands and the progress display.

The top layer: it may import everything, nothing imports it.
"""
