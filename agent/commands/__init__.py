"""The `hearth` subcommands, one module each; every module has `add_parser(subparsers)` and a
row in agent.cli.COMMANDS, which imports the module only when its command runs."""
