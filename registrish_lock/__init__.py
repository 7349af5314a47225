"""registrish: build a static Docker/OCI registry from a declared set of images."""

__version__ = "0.1.0"
#: Sent on every request registrish makes: registries, token services, storage, deployments.
USER_AGENT = f"registrish/{__version__}"
