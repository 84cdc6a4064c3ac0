"""`relight-api`: serve the gateway with uvicorn."""

from __future__ import annotations

import argparse

import uvicorn

from api.app import create_app
from api.serving import server_options
from relight.core.config import get_settings
from relight.core.logs import configure_logging


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relight-api", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port to bind (default 8000)")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(create_app(settings), host=args.host, port=args.port, **server_options(settings))


if __name__ == "__main__":
    main()
