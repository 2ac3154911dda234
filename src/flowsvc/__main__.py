"""The `flowsvc` command line (also `python -m flowsvc`).

`serve`, `keys` and `webhook-secret` run the server side, with the argument parsing they always had
(flowsvc.admin); every other command is a client of a running server (flowsvc.cli)."""

from __future__ import annotations

import sys

SERVER_COMMANDS = ("serve", "keys", "webhook-secret")


INTERRUPTED = 130  # Ctrl-C, as shells report it


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:  # Ctrl-C before a command took it over (while importing): quiet
        return INTERRUPTED


def _main(argv: list[str] | None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] in SERVER_COMMANDS:
        try:
            from flowsvc.admin import main as admin_main
        except ImportError as exc:
            # The client-only install (no `server` extra) has no database drivers.
            print(
                f"flowsvc: '{args[0]}' needs the server's dependencies ({exc.name} is missing): "
                "pip install 'flowsvc[server]'",
                file=sys.stderr,
            )
            return 1
        return admin_main(args)
    from flowsvc.cli.app import main as cli_main

    return cli_main(args)


if __name__ == "__main__":
    sys.exit(main())
