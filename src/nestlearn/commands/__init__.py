"""Extra ``nestlearn`` subcommands, discovered at start-up.

Each module here defines ``COMMAND`` (the subcommand name), ``HELP`` (one line),
``add_args(parser)`` and ``run(args) -> int``. ``nestlearn.cli`` adds them all, so a new
command is one new file and never an edit of the CLI module.
"""
