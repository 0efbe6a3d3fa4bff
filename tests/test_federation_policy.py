"""The federation policy's pure rules: hosts without ports, globs, the ACLs, guest levels."""

from __future__ import annotations

from bridge.federation import FederationPolicy, host_of


def test_hosts_are_compared_without_ports() -> None:
    assert host_of("Agency.Example:8448") == "agency.example"
    assert host_of("[::1]:8448") == "[::1]"
    assert host_of("127.0.0.1") == "127.0.0.1"


def test_allowed_servers_match_hosts_and_globs() -> None:
    policy = FederationPolicy("chat.corp.example", ("agency.example", "*.supplier.example"))
    assert policy.is_allowed("@a:agency.example:8448")
    assert policy.is_allowed("@b:eu.supplier.example")
    assert not policy.is_allowed("@c:supplier.example.evil")
    assert not policy.is_allowed("@d:other.example")
    local = "@e:chat.corp.example"
    assert policy.is_allowed(local) and not policy.is_remote(local)
    listed = ["@a:agency.example", "@d:other.example", local]
    assert policy.listed_guests(listed) == ["@a:agency.example"]


def test_acls_list_this_server_with_and_without_its_port() -> None:
    policy = FederationPolicy("localhost:8448", ("127.0.0.1",))
    assert policy.server_acl() == {
        "allow": ["127.0.0.1", "localhost", "localhost:8448"],
        "deny": [],
        "allow_ip_literals": True,
    }
    # Direct chats stay here unless direct_with_guests lets the allowed servers in.
    assert policy.direct_acl() == {
        "allow": ["localhost", "localhost:8448"],
        "deny": [],
        "allow_ip_literals": False,
    }
    opened = FederationPolicy("localhost:8448", ("127.0.0.1",), direct_with_guests=True)
    assert opened.direct_acl() == opened.server_acl()
    # A server whose own name is an IP address must not shut itself out.
    assert FederationPolicy("10.0.0.1:8448").direct_acl()["allow_ip_literals"] is True


def test_guests_stay_below_every_role() -> None:
    roles = {"admin": 100, "manager": 50, "employee": 0}
    assert FederationPolicy("x").guest_level(roles) == -1
    assert FederationPolicy("x", guest_level_setting=-10).guest_level(roles) == -10
    assert FederationPolicy("x", guest_level_setting=50).guest_level(roles) == -1
