"""Extension objects, created once and bound to each app in :func:`acme_api.create_app`."""

from fluxrate_web.flask import Fluxrate

fluxrate = Fluxrate()
