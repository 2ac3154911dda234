"""Command line: `python -m flowsvc serve` and `python -m flowsvc keys create`."""

from __future__ import annotations

import argparse
import asyncio
import sys

from flowsvc import logs
from flowsvc.api.server import serve
from flowsvc.config import Settings, normalize_database_url
from flowsvc.domain.errors import InvalidArgument
from flowsvc.domain.keys import Keys
from flowsvc.store.database import Database
from flowsvc.store.sql_store import SqlStore


async def _create_key(settings: Settings, org: str) -> str:
    database = Database(normalize_database_url(settings.database_url))
    try:
        await database.migrate()
        minted = await Keys(SqlStore(database)).mint(org)
    finally:
        await database.close()
    return minted.secret


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="flowsvc", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve_cmd = commands.add_parser("serve", help="serve the gRPC API")
    serve_cmd.add_argument(
        "--listen", help="HOST:PORT (env FLOWSVC_LISTEN; default 127.0.0.1:50051)"
    )
    serve_cmd.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")

    keys_cmd = commands.add_parser("keys", help="manage API keys")
    key_actions = keys_cmd.add_subparsers(dest="action", required=True)
    create = key_actions.add_parser("create", help="mint a key; prints it once, last line")
    create.add_argument("--org", required=True, help="the organisation the key belongs to")
    create.add_argument("--database-url", help="SQLAlchemy URL (env FLOWSVC_DATABASE_URL)")

    args = parser.parse_args(argv)
    settings = Settings.from_env(
        listen=getattr(args, "listen", None), database_url=args.database_url
    )
    logs.configure(settings.log_level)
    if args.command == "serve":
        try:
            asyncio.run(serve(settings))
        except OSError as exc:
            print(f"flowsvc: {exc}", file=sys.stderr)
            return 1
        return 0
    try:
        secret = asyncio.run(_create_key(settings, args.org))
    except InvalidArgument as exc:
        print(f"flowsvc: {exc.message}", file=sys.stderr)
        return 2
    print(f"API key for organisation {args.org!r}, shown once.")
    print("Send it as metadata 'authorization: Bearer <key>' or 'api-key: <key>':")
    print(secret)
    return 0


if __name__ == "__main__":
    sys.exit(main())
