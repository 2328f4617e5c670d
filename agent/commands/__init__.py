"""The `hearth` subcommands, one module each; every module has `add_parser(subparsers)`."""
