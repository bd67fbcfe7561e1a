"""A Fluxrate-compatible local server (the "devserver") and ``DevServer`` to run it.

This package shares no code with ``fluxrate_web.core``: a bug shared by the client and the
server it is tested against would hide itself. Importing it loads only the standard
library; the server modules (Starlette, uvicorn) load when the server runs.
"""

from fluxrate_web.devserver.harness import DevServer, DevServerError

__all__ = ["DevServer", "DevServerError"]
