"""One module per subcommand. Each exposes `NAME`, `HELP`, `add_arguments(parser)`
and `run(args, console) -> int`; the CLI only parses and dispatches."""
