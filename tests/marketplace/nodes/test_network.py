"""The network that groups nodes for replica diversity (/24, /48, loopback and private), and where a request comes
from (REMOTE_ADDR, X-Forwarded-For only behind a trusted proxy)."""

from __future__ import annotations

import pytest

from marketplace.nodes.network import LOCAL, address_normalize, client_address, network_key


@pytest.mark.parametrize(
    ("address", "key"),
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("203.0.113.250", "203.0.113.0/24"),
        ("203.0.114.7", "203.0.114.0/24"),
        ("8.8.8.8", "8.8.8.0/24"),
        ("2001:db8:1234:5678::1", "2001:db8:1234::/48"),
        ("2001:db8:1234:ffff:1:2:3:4", "2001:db8:1234::/48"),
        ("2001:db8:1235::1", "2001:db8:1235::/48"),
        # An IPv4 client seen through an IPv6 socket is that IPv4 client.
        ("::ffff:203.0.113.9", "203.0.113.0/24"),
    ],
)
def test_public_addresses_group_by_slash_24_or_slash_48(address: str, key: str) -> None:
    assert network_key(address, private_are_one=False) == key
    assert network_key(address, private_are_one=True) == key


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.5.5.5", "10.1.2.3", "172.16.0.9", "172.31.255.1", "192.168.1.20", "100.64.3.3",
     "169.254.1.1", "::1", "fd00::1", "fe80::1", "::ffff:10.0.0.1"],
)  # fmt: skip
def test_loopback_and_private_addresses_group_nobody_unless_configured(address: str) -> None:
    assert network_key(address, private_are_one=False) is None
    assert network_key(address, private_are_one=True) == LOCAL


@pytest.mark.parametrize("address", [None, "", "not-an-ip", "300.1.1.1", "203.0.113"])
def test_no_or_a_malformed_address_groups_nobody(address: str | None) -> None:
    assert network_key(address, private_are_one=True) is None
    assert address_normalize(address) is None


def test_addresses_are_stored_in_one_form() -> None:
    assert address_normalize(" 2001:DB8::0001 ") == "2001:db8::1"
    assert address_normalize("::ffff:203.0.113.9") == "203.0.113.9"


def test_x_forwarded_for_is_ignored_unless_the_peer_is_a_trusted_proxy() -> None:
    meta = {"REMOTE_ADDR": "203.0.113.7", "HTTP_X_FORWARDED_FOR": "198.51.100.1"}
    assert client_address(meta, trusted_proxies=[]) == "203.0.113.7"
    assert client_address(meta, trusted_proxies=["10.0.0.1"]) == "203.0.113.7"


def test_behind_trusted_proxies_the_nearest_untrusted_hop_is_the_client() -> None:
    # The client wrote "6.6.6.6" itself; 198.51.100.1 is what the first trusted proxy saw.
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "6.6.6.6, 198.51.100.1, 10.0.0.9"}
    assert client_address(meta, trusted_proxies=["10.0.0.0/8"]) == "198.51.100.1"
    assert client_address(meta, trusted_proxies=["10.0.0.2"]) == "10.0.0.9"


def test_a_trusted_proxy_without_a_usable_header_is_the_address() -> None:
    assert client_address({"REMOTE_ADDR": "10.0.0.2"}, trusted_proxies=["10.0.0.2"]) == "10.0.0.2"
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "garbage"}
    assert client_address(meta, trusted_proxies=["10.0.0.2"]) == "10.0.0.2"
    assert client_address({"REMOTE_ADDR": ""}, trusted_proxies=[]) is None
