"""The `flowsvc` command tree. Client commands talk to a running server (--server/--api-key or
FLOWSVC_SERVER/FLOWSVC_API_KEY); `serve`, `keys` and `webhook-secret` are listed here for
--help and handled by flowsvc.admin."""

from __future__ import annotations

import typer

from flowsvc.cli import resources, running

app = typer.Typer(
    help="flowsvc: host LLM workflow graphs, and drive them from a terminal.",
    no_args_is_help=True,
    # Errors are reported in a line or two by the commands themselves (cli.common.execute).
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
app.add_typer(resources.flows, name="flows")
app.add_typer(resources.sessions, name="sessions")
resources.sessions.command("fork")(running.fork)
app.add_typer(resources.runs, name="runs")
app.command("run")(running.run)
app.command("answer")(running.answer)
app.command("watch")(running.watch)
app.command("cancel")(resources.cancel)

_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True}


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def serve(ctx: typer.Context) -> None:
    """Serve the gRPC API (see `flowsvc serve --help`)."""
    from flowsvc.__main__ import main as entry

    raise typer.Exit(entry(["serve", *ctx.args]))


@app.command(context_settings=_PASS_THROUGH, add_help_option=False)
def keys(ctx: typer.Context) -> None:
    """Manage API keys: create, list, revoke (see `flowsvc keys --help`)."""
    from flowsvc.__main__ import main as entry

    raise typer.Exit(entry(["keys", *ctx.args]))


@app.command("webhook-secret", context_settings=_PASS_THROUGH, add_help_option=False)
def webhook_secret(ctx: typer.Context) -> None:
    """Print the secret that signs run callbacks (see `flowsvc webhook-secret --help`)."""
    from flowsvc.__main__ import main as entry

    raise typer.Exit(entry(["webhook-secret", *ctx.args]))


def main(argv: list[str]) -> int:
    try:
        app(args=argv, prog_name="flowsvc")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
