"""fluxrate-web: usage-based billing for Starlette/FastAPI, Django and Flask."""

from fluxrate_web._version import __version__

__all__ = ["__version__"]
