"""Where a node's requests come from, and the network that groups nodes for replica diversity: the /24 of an
IPv4 address, the /48 of an IPv6 one (BOINC gives one result of a work unit per user; we add per network)."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping

IPV4_PREFIX = 24
IPV6_PREFIX = 48
# The one network every loopback and private address belongs to, when they are grouped at all.
LOCAL = "local"
# Loopback, private (RFC 1918, RFC 6598 carrier-grade NAT, IPv6 unique local) and link-local addresses say
# nothing about who runs a node: a local stack runs every node on 127.0.0.1. Listed here rather than taken from
# `ipaddress`'s is_private, which also covers the documentation ranges (192.0.2.0/24, 2001:db8::/32).
LOCAL_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in (
        "127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10", "169.254.0.0/16",
        "0.0.0.0/32", "::1/128", "::/128", "fc00::/7", "fe80::/10",
    )
)  # fmt: skip

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def _parse(text: str) -> IPAddress | None:
    try:
        ip = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    # An IPv4 client seen through an IPv6 socket (::ffff:203.0.113.7) is that IPv4 client.
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def address_normalize(address: str | None) -> str | None:
    """`address` in its canonical text form (IPv4-mapped IPv6 as IPv4), or None when it is not an address."""
    ip = _parse(address or "")
    return None if ip is None else str(ip)


def is_local(address: str) -> bool:
    """Whether `address` is loopback, private or link-local (see LOCAL_NETWORKS)."""
    ip = _parse(address)
    return ip is not None and any(ip.version == net.version and ip in net for net in LOCAL_NETWORKS)


def network_key(address: str | None, *, private_are_one: bool) -> str | None:
    """The network `address` belongs to for replica diversity: "203.0.113.0/24", "2001:db8:1::/48". A loopback
    or private address belongs to LOCAL when `private_are_one`, else to no network (it groups no nodes); so does
    a missing or malformed address."""
    ip = _parse(address or "")
    if ip is None:
        return None
    if is_local(str(ip)):
        return LOCAL if private_are_one else None
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


def client_address(meta: Mapping[str, str], *, trusted_proxies: Iterable[str]) -> str | None:
    """The address a request comes from: REMOTE_ADDR, unless that is a trusted proxy (an address or a network in
    `trusted_proxies`); then the nearest address in X-Forwarded-For that is not one. The header is read from the
    right: a client may write anything at its left end, but each trusted proxy appends the address it saw."""
    remote = _parse(meta.get("REMOTE_ADDR", ""))
    if remote is None:
        return None
    trusted = [ipaddress.ip_network(p.strip(), strict=False) for p in trusted_proxies if p.strip()]

    def is_trusted(ip: IPAddress) -> bool:
        return any(ip.version == net.version and ip in net for net in trusted)

    nearest = remote
    if not is_trusted(remote):
        return str(remote)
    for hop in reversed(meta.get("HTTP_X_FORWARDED_FOR", "").split(",")):
        ip = _parse(hop)
        if ip is None:
            break  # what a trusted proxy appends is always an address: anything else was written by the client
        nearest = ip
        if not is_trusted(ip):
            break
    return str(nearest)
