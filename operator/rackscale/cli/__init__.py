"""The `rackscale` command: `run` the operator, `plan` offline, show `racks`."""
