"""`RELIGHT_REDIS_URL`: one Redis server, or the primary that Redis Sentinel names.

Besides redis-py's own URLs (`redis://`, `rediss://`, `unix://`), a Sentinel deployment is
written

    redis+sentinel://[[username]:password@]host1:port1,host2:port2,…/service_name[/db]
        [?sentinel_password=…]

The sentinels are asked which server is the primary of `service_name`, and asked again
whenever a connection to it fails, so a failover moves every client (api, workers, CLI, GPU
nodes) to the promoted replica. `username`/`password` are the Redis servers' credentials;
`sentinel_password` is the sentinels' own (unset: they take none). A port left out is 26379.

Imports only redis-py: the GPU node uses it too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar, overload
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio import Redis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

SENTINEL_SCHEME = "redis+sentinel"
SENTINEL_PORT = 26379
# Connecting to a server that is down (a killed primary, an unreachable host) fails after
# this long, so the next try asks the sentinels again soon.
SENTINEL_CONNECT_TIMEOUT_S = 2.0

AnyRedis = TypeVar("AnyRedis", bound="Redis")


@dataclass(frozen=True)
class SentinelTarget:
    """What a `redis+sentinel://` URL names."""

    sentinels: tuple[tuple[str, int], ...]
    service_name: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinel_password: str | None = None


def parse_sentinel_url(url: str) -> SentinelTarget | None:
    """The sentinels and service of a `redis+sentinel://` URL; None for any other URL.
    ValueError when the URL is malformed."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        return None
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    sentinels = tuple(_host_port(host) for host in hosts.split(",") if host.strip())
    if not sentinels:
        raise ValueError(f"{SENTINEL_SCHEME}:// needs at least one sentinel host: {url!r}")
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise ValueError(
            f"{SENTINEL_SCHEME}:// needs the service name, then optionally the database: "
            f"…/service_name[/db], got {parts.path!r}"
        )
    if len(path) == 2 and not path[1].isdigit():
        raise ValueError(f"the Redis database must be a number, got {path[1]!r}")
    query = parse_qs(parts.query)
    unknown = set(query) - {"sentinel_password"}
    if unknown:
        raise ValueError(f"unknown {SENTINEL_SCHEME}:// parameters: {sorted(unknown)}")
    return SentinelTarget(
        sentinels=sentinels,
        service_name=unquote(path[0]),
        db=int(path[1]) if len(path) == 2 else 0,
        username=unquote(username) or None,
        password=unquote(password) or None,
        sentinel_password=query["sentinel_password"][0] if "sentinel_password" in query else None,
    )


def _host_port(text: str) -> tuple[str, int]:
    host, _, port = text.strip().rpartition(":") if ":" in text else (text.strip(), "", "")
    host = host.strip("[]")  # an IPv6 literal: [::1]:26379
    if not host:
        raise ValueError(f"a sentinel needs a host name: {text!r}")
    if port and not port.isdigit():
        raise ValueError(f"a sentinel's port must be a number: {text!r}")
    return host, int(port) if port else SENTINEL_PORT


def check_redis_url(url: str) -> str:
    """`url` if Relight can connect with it (a Settings validator); ValueError otherwise."""
    if parse_sentinel_url(url) is None and urlsplit(url).scheme not in (
        "redis",
        "rediss",
        "unix",
    ):
        raise ValueError(
            f"a Redis URL is redis://, rediss://, unix:// or {SENTINEL_SCHEME}://, got {url!r}"
        )
    return url


@overload
def open_redis(url: str, redis_class: None = None, **options: Any) -> Redis: ...


@overload
def open_redis(url: str, redis_class: type[AnyRedis], **options: Any) -> AnyRedis: ...


def open_redis(url: str, redis_class: type[Redis] | None = None, **options: Any) -> Redis:
    """A client of `redis_class` (default redis-py's) for `url`; connections open on first use.
    `options` are connection options (timeouts, retry) for the Redis server, whichever server
    that is."""
    cls = redis_class or Redis
    target = parse_sentinel_url(url)
    if target is None:
        client: Redis = cls.from_url(url, **options)
        return client
    return sentinel_client(target, cls, **options)


def sentinel_client(target: SentinelTarget, redis_class: type[Redis], **options: Any) -> Redis:
    """A client of the primary of `target.service_name`, as its sentinels name it now (and
    again after each failed connection)."""
    options.setdefault("socket_connect_timeout", SENTINEL_CONNECT_TIMEOUT_S)
    sentinel_options: dict[str, Any] = {
        key: value for key, value in options.items() if key.startswith("socket_")
    }
    if target.sentinel_password is not None:
        sentinel_options["password"] = target.sentinel_password
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        list(target.sentinels),
        sentinel_kwargs=sentinel_options,
        db=target.db,
        username=target.username,
        password=target.password,
        **options,
    )
    client: Redis = sentinel.master_for(
        target.service_name, redis_class=redis_class, connection_pool_class=_PrimaryPool
    )
    return client


class _PrimaryPool(SentinelConnectionPool):
    """The primary's connections; closing them (the client's `aclose()`) closes the
    connections to the sentinels too, which would otherwise stay open until collected."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        for sentinel in self.sentinel_manager.sentinels:
            await sentinel.connection_pool.disconnect()
