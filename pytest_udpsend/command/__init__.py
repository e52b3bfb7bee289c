"""The ``udpsend`` command's subcommands: their argparse options, what they print, their exit statuses.

``cli.py`` is the console-script entry point and only wires (``cli.main`` is ``command.main.main``).
The measuring and the judging are the lower layers': each subcommand turns their data (rows,
verdicts, statuses) into lines and an exit status here, and nowhere else.
"""
