from fluxrate_web.cli import main

raise SystemExit(main())
