"""`relight-worker`: run an arq worker until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import logging

import uvloop

from relight.core.config import get_settings
from relight.core.logs import configure_logging
from worker.settings import build_worker


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="relight-worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    logging.getLogger(__name__).info("starting worker (queue %s)", settings.queue_name)
    # arq runs on the loop current when the Worker is built: make that a uvloop.
    asyncio.set_event_loop(uvloop.new_event_loop())
    build_worker(settings, burst=args.burst).run()


if __name__ == "__main__":
    main()
