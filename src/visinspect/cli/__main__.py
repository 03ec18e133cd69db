"""`python -m visinspect.cli`: what the server runs for `visinspect head train`."""

from visinspect.cli import main

raise SystemExit(main())
