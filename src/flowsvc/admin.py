"""The server side of the command line: `flowsvc serve`, `flowsvc keys ...` and
`flowsvc webhook-secret` (they need the `server` extra). `flowsvc.__main__` sends these
commands here."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import TypeVar

from sqlalchemy import make_url

from flowsvc import logs
from flowsvc.app import serve
from flowsvc.config import Settings, normalize_database_url
from flowsvc.domain.errors import InvalidArgument, Unavailable
from flowsvc.domain.ids import now
from flowsvc.domain.keys import Keys
from flowsvc.store.database import Database
from flowsvc.store.sql_store import SqlStore

T = TypeVar("T")


def _duration(text: str) -> timedelta:
    """'90s', '30m', '12h', '30d'."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) < 2 or text[-1] not in units or not text[:-1].isdigit() or int(text[:-1]) <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: use a positive number with s, m, h or d")
    return timedelta(seconds=int(text[:-1]) * units[text[-1]])


def _shown(url: str) -> str:
    """The database URL as it may be printed: a password in it is masked."""
    return make_url(url).render_as_string(hide_password=True)


async def _with_keys(settings: Settings, work: Callable[[Keys], Awaitable[T]]) -> T:
    url = normalize_database_url(settings.database_url)
    # On stderr, so the key stays alone on the last line of stdout. Which database a key went
    # to is the first question when the server calls it invalid.
    print(f"flowsvc: keys in {_shown(url)}", file=sys.stderr)
    database = Database(url)
    try:
        await database.migrate()
        return await work(Keys(SqlStore(database)))
    finally:
        await database.close()


def _keys_command(args: argparse.Namespace, settings: Settings) -> int:
    if args.action == "create":
        expires = now() + args.expires_in if args.expires_in else None
        try:
            minted = asyncio.run(_with_keys(settings, lambda k: k.mint(args.org, expires)))
        except InvalidArgument as exc:
            print(f"flowsvc: {exc.message}", file=sys.stderr)
            return 2
        print(f"API key {minted.record.id} for organisation {args.org!r}, shown once.")
        if expires:
            print(f"It expires at {expires.isoformat(timespec='seconds')}.")
        print("Send it as metadata 'authorization: Bearer <key>' or 'api-key: <key>':")
        print(minted.secret)
        return 0
    if args.action == "list":
        keys = asyncio.run(_with_keys(settings, lambda k: k.list(args.org or "")))
        columns = ("id", "organisation", "created", "last used", "expires")
        print(" ".join(f"{c:<{18 if c == 'id' else 20}}" for c in columns) + " revoked")
        for key in keys:
            print(
                f"{key.id:<18} {key.organisation_id:<20} {_when(key.created_at):<20} "
                f"{_when(key.last_used_at):<20} {_when(key.expires_at):<20} {_when(key.revoked_at)}"
            )
        return 0
    revoked = asyncio.run(_with_keys(settings, lambda k: k.revoke(args.key_id)))
    if not revoked:
        print(f"flowsvc: no active key {args.key_id!r}", file=sys.stderr)
        return 1
    print(f"revoked {args.key_id}")
    return 0


def _when(value: datetime | None) -> str:
    return "-" if value is None else value.isoformat(timespec="seconds").replace("+00:00", "Z")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="serve the gRPC API")
    serve_cmd.add_argument(
        "--listen", help="HOST:PORT (env FLOWSVC_LISTEN; default 127.0.0.1:50051)"
    )
    serve_cmd.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")
    serve_cmd.add_argument(
        "--metrics-listen",
        help="HOST:PORT for Prometheus /metrics (env FLOWSVC_METRICS_LISTEN; default off)",
    )

    keys_cmd = commands.add_parser("keys", help="manage API keys")
    key_actions = keys_cmd.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="mint a key; prints it once, last line")
    create.add_argument("--org", required=True, help="the organisation the key belongs to")
    create.add_argument("--expires-in", type=_duration, help="e.g. 90d; default: never")
    create.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")
    listing = key_actions.add_parser("list", help="id, organisation, dates; never the secret")
    listing.add_argument("--org", help="only this organisation's keys")
    listing.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")
    revoke = key_actions.add_parser("revoke", help="revoke a key at once")
    revoke.add_argument("key_id", help="the key's id (from 'keys list')")
    revoke.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")

    secret_cmd = commands.add_parser(
        "webhook-secret",
        help="print the organisation's webhook secret (RunOptions.webhook_url callbacks are "
        "signed with it), creating it if there is none",
    )
    secret_cmd.add_argument("--org", required=True)
    secret_cmd.add_argument("--rotate", action="store_true", help="replace it with a new one")
    secret_cmd.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")

    args = parser.parse_args(argv)
    try:
        settings = Settings.from_env(
            listen=getattr(args, "listen", None),
            database_url=args.database_url,
            metrics_listen=getattr(args, "metrics_listen", None),
        )
    except ValueError as exc:
        print(f"flowsvc: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level)
    if args.command == "serve":
        # Said before anything else, so an operator sees which database keys must go to.
        logging.getLogger("flowsvc").info(
            "database", extra={"database": _shown(normalize_database_url(settings.database_url))}
        )
        try:
            asyncio.run(serve(settings))
        except (OSError, ValueError) as exc:
            logs.flush()  # the lines logged before it come first
            print(f"flowsvc: {exc}", file=sys.stderr)
            return 1
        except Unavailable as exc:  # at start: the database refused or is not there
            logs.flush()
            print(f"flowsvc: no database to serve: {_first_line(exc.__cause__)}", file=sys.stderr)
            return 1
        return 0
    if args.command == "webhook-secret":
        print(asyncio.run(_webhook_secret(settings, args.org, args.rotate)))
        return 0
    return _keys_command(args, settings)


def _first_line(cause: BaseException | None) -> str:
    """What the driver said, without SQLAlchemy's appendix (the statement, a link)."""
    said = str(getattr(cause, "orig", None) or cause or "").strip()
    return said.splitlines()[0] if said else "no reason given"


async def _webhook_secret(settings: Settings, org: str, rotate: bool) -> str:
    from flowsvc.domain.webhooks import new_secret
    from flowsvc.store.webhook_store import SqlWebhookStore

    url = normalize_database_url(settings.database_url)
    print(f"flowsvc: webhook secret in {_shown(url)}", file=sys.stderr)
    database = Database(url)
    try:
        await database.migrate()
        store = SqlWebhookStore(database, "cli")
        secret = await store.org_secret(org)
        if secret is None or rotate:
            secret = new_secret()
            await store.set_org_secret(org, secret, now())
        return secret
    finally:
        await database.close()

