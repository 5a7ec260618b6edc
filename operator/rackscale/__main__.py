"""`python -m rackscale`: the same as the `rackscale` command."""

from rackscale.cli.main import main

raise SystemExit(main())
