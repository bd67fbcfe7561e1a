"""The example project's settings (``fluxdemo.settings``), reading ``fluxrate.yaml`` from the
file the chaos suite wrote (the example's own rules plus the chaos settings)."""

import os

from fluxdemo.settings import *  # noqa: F403
from fluxdemo.settings import FLUXRATE

FLUXRATE = {**FLUXRATE, "CONFIG": os.environ["CHAOS_FLUXRATE_CONFIG"]}
