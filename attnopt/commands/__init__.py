"""The CLI's commands, one family a module; attnopt.cli assembles them into the `attnopt` group."""
