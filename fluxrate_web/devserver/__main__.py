"""``python -m fluxrate_web.devserver [flags]`` is ``fluxrate-web devserver [flags]``."""

import sys

from fluxrate_web.cli import main

raise SystemExit(main(["devserver", *sys.argv[1:]]))
