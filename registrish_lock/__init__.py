"""registrish: build a static Docker/OCI registry from a declared set of images."""

__version__ = "0.1.0"
