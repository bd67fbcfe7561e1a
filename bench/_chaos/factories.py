"""uvicorn ``--factory`` targets: the example apps built with the chaos suite's configuration.

``examples/fastapi_app/main.py`` builds ``app`` from the ``fluxrate.yaml`` next to it; its
``create_app(config)`` takes another file, which is how the chaos suite adds its settings
(failure log, durability, retry budget) without touching the example.
"""

from __future__ import annotations

import os
from typing import Any


def fastapi_app() -> Any:
    from fastapi_app.main import create_app

    return create_app(os.environ["CHAOS_FLUXRATE_CONFIG"])
