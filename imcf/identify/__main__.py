"""`python -m imcf.identify graph=<name|path.yaml> query="P(...)"`; see imcf.identify.cli."""

from imcf.identify.cli import main

raise SystemExit(main())
