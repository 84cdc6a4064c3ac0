"""Outbound HTTP that cannot be turned against private networks (SSRF-safe).

Every request we make to a user-supplied URL (webhook deliveries, `subject_image` fetches)
goes through `egress_stream`: resolve the host, refuse the request if *any* address it resolves
to is not public (loopback, private, link-local and cloud metadata, CGNAT, multicast, reserved,
unspecified, and those hidden in IPv4-mapped, NAT64, 6to4 and Teredo IPv6 forms), then connect
to the address that was checked, not to the name (a second lookup could answer differently).
The Host header and TLS SNI still carry the name, so virtual hosts and certificates work.
Redirects are never followed here; a caller that follows them checks every hop again.

An allow-list (`RELIGHT_EGRESS_ALLOWLIST`: host names and CIDRs) admits named exceptions; the
tests use it for their receivers on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import httpx

from relight.core.errors import InvalidParameter, RelightError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

NAT64_PREFIXES = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))
# Forms inet_aton accepts (0x7f000001, 2130706433, 127.1, 0177.0.0.1): numbers, not names.
NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.I)
DEFAULT_PORTS = {"http": 80, "https": 443}


class EgressRefused(RelightError):
    """The URL points (or resolves) somewhere we do not send requests to."""

    status_code = 422
    code = "url_not_allowed"


@dataclass(frozen=True)
class EgressPolicy:
    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()

    @classmethod
    def parse(cls, allowlist: str) -> EgressPolicy:
        """`"127.0.0.1, 10.0.0.0/8, images.internal"` → hosts and networks."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for item in (part.strip() for part in allowlist.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item.strip("[]"), strict=False))
            except ValueError:
                hosts.add(item.lower().rstrip("."))
        return cls(frozenset(hosts), tuple(networks))

    def allows_host(self, host: str) -> bool:
        return host.lower().rstrip(".") in self.allowed_hosts

    def allows_address(self, address: IPAddress) -> bool:
        return any(address in network for network in self.allowed_networks) or is_public(address)


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address stands for (mapped, NAT64, 6to4, Teredo), if any."""
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if any(address in prefix for prefix in NAT64_PREFIXES):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    return None


def is_public(address: IPAddress) -> bool:
    """True only for globally routable unicast addresses, looking through IPv6 wrappers."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = embedded_ipv4(address)
        if inner is not None:
            return is_public(inner)
    return address.is_global and not (
        address.is_multicast or address.is_reserved or address.is_unspecified
    )


def literal_address(host: str) -> IPAddress | None:
    """The address a host *is* (not resolves to): IP literals and numeric IPv4 forms."""
    bare = host.strip("[]")
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        pass
    if NUMERIC_HOST.match(bare):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(bare))
        except OSError:
            return None
    return None


@dataclass(frozen=True)
class Destination:
    scheme: str
    host: str
    port: int
    path: str


def parse_destination(url: str, *, field: str) -> Destination:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not parts.hostname:
        raise InvalidParameter(
            f"{field}: must be an absolute http or https URL", extra={"field": field}
        )
    if parts.username or parts.password:
        raise InvalidParameter(
            f"{field}: URLs with credentials are not accepted", extra={"field": field}
        )
    try:
        port = parts.port or DEFAULT_PORTS[scheme]
    except ValueError as exc:
        raise InvalidParameter(f"{field}: invalid port", extra={"field": field}) from exc
    path = urlunsplit(("", "", parts.path or "/", parts.query, ""))
    return Destination(scheme=scheme, host=parts.hostname, port=port, path=path)


def check_url(url: str, policy: EgressPolicy, *, field: str) -> None:
    """What can be known without DNS: refuse URLs that could never be allowed (at submit)."""
    destination = parse_destination(url, field=field)
    if policy.allows_host(destination.host):
        return
    host = destination.host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        raise EgressRefused(f"{field}: {host} is not reachable from here", extra={"field": field})
    literal = literal_address(host)
    if literal is not None and not policy.allows_address(literal):
        raise EgressRefused(f"{field}: {literal} is not a public address", extra={"field": field})


async def resolve(destination: Destination, policy: EgressPolicy, *, field: str) -> IPAddress:
    """The checked address to connect to: every address of the name must be allowed."""
    literal = literal_address(destination.host)
    if literal is not None:
        addresses = [literal]
    else:
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                destination.host, destination.port, type=socket.SOCK_STREAM
            )
        except socket.gaierror as exc:
            raise EgressRefused(
                f"{field}: the host {destination.host!r} does not resolve",
                extra={"field": field, "retryable": True},
            ) from exc
        addresses = [ipaddress.ip_address(info[4][0]) for info in infos]
    if not addresses:
        raise EgressRefused(f"{field}: {destination.host!r} has no address")
    if policy.allows_host(destination.host):
        return addresses[0]
    refused = [address for address in addresses if not policy.allows_address(address)]
    if refused:
        raise EgressRefused(
            f"{field}: {destination.host} resolves to {refused[0]}, which is not a public address",
            extra={"field": field},
        )
    return addresses[0]


@asynccontextmanager
async def egress_stream(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    policy: EgressPolicy,
    *,
    field: str,
    headers: dict[str, str] | None = None,
    content: bytes | None = None,
    timeout_s: float,
) -> AsyncIterator[httpx.Response]:
    """Send one request to `url` through the checks above; the response streams."""
    destination = parse_destination(url, field=field)
    address = await resolve(destination, policy, field=field)
    host_in_url = f"[{address}]" if address.version == 6 else str(address)
    target = f"{destination.scheme}://{host_in_url}:{destination.port}{destination.path}"
    default_port = DEFAULT_PORTS[destination.scheme] == destination.port
    name = f"[{destination.host}]" if ":" in destination.host else destination.host
    host_header = name if default_port else f"{name}:{destination.port}"
    request = client.build_request(
        method,
        target,
        headers={**(headers or {}), "Host": host_header},
        content=content,
        timeout=timeout_s,
        extensions={"sni_hostname": destination.host},
    )
    response = await client.send(request, stream=True, follow_redirects=False)
    try:
        yield response
    finally:
        await response.aclose()
