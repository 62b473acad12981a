"""The package version, single-sourced for packaging and the User-Agent header."""

__version__ = "0.1.0"
