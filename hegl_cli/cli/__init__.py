"""The `hegl` command line: one thin module per subcommand, all calling the engine."""
