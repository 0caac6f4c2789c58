"""The pure IPAM core: subnet picking, user-given subnets, round-robin address picking."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest
from hypothesis import given
from hypothesis import strategies as st

from supervisor.errors import AlreadyExists, FailedPrecondition, InvalidArgument
from supervisor.network.ipam import (
    DEFAULT_POOLS,
    NetworkConfig,
    as_networks,
    check_static,
    config_for,
    next_address,
    parse_address,
    pick_subnet,
    validate_network,
)

net = IPv4Network
addr = IPv4Address


def test_default_pools_are_dockers_172_17_to_31_then_192_168_in_20s():
    subnets = [s for pool in DEFAULT_POOLS for s in pool.subnets()]
    assert subnets[:15] == [net(f"172.{n}.0.0/16") for n in range(17, 32)]
    assert subnets[15:] == [net(f"192.168.{n}.0/20") for n in range(0, 256, 16)]


def test_pick_subnet_skips_routes_resolvers_and_other_networks():
    taken = as_networks([net("172.17.0.0/16"), addr("172.18.3.4"), net("172.16.0.0/12")])
    assert pick_subnet(taken=taken[:2]) == net("172.19.0.0/16")
    assert pick_subnet(taken=taken) == net("192.168.0.0/20")


def test_pick_subnet_honours_a_size():
    assert pick_subnet(taken=[], size=24) == net("172.17.0.0/24")


def test_pick_subnet_fails_clearly_when_the_pools_are_exhausted():
    with pytest.raises(FailedPrecondition, match="non-overlapping IPv4 address pool"):
        pick_subnet(taken=[net("0.0.0.0/0")])


taken_networks = st.lists(
    st.builds(
        lambda value, prefix: IPv4Network((value, prefix), strict=False),
        st.integers(0xAC000000, 0xC0A8FFFF),
        st.integers(8, 32),
    ),
    max_size=8,
)


@given(taken_networks)
def test_a_picked_subnet_overlaps_nothing_taken(taken):
    try:
        picked = pick_subnet(taken=taken)
    except FailedPrecondition:
        every = [s for pool in DEFAULT_POOLS for s in pool.subnets()]
        assert all(any(s.overlaps(t) for t in taken) for s in every)
        return
    assert not any(picked.overlaps(t) for t in taken)
    assert any(picked.subnet_of(pool.base) for pool in DEFAULT_POOLS)


def test_validate_network_defaults_the_gateway_to_the_first_host():
    assert validate_network("10.9.0.0/24") == NetworkConfig(net("10.9.0.0/24"), addr("10.9.0.1"))
    config = validate_network("10.9.0.0/16", "10.9.255.254", "10.9.8.0/24")
    assert config.ip_range == net("10.9.8.0/24")
    assert config.gateway == addr("10.9.255.254")


@pytest.mark.parametrize(
    ("subnet", "gateway", "ip_range", "words"),
    [
        ("10.9.0.0", "", "", "invalid CIDR block notation"),
        ("nonsense/8", "", "", "invalid CIDR block notation"),
        ("fd00::/64", "", "", "only IPv4"),
        ("10.9.0.5/24", "", "", "it should be 10.9.0.0/24"),
        ("10.9.0.0/31", "", "", "too small"),
        ("10.9.0.0/24", "10.9.1.1", "", "parent subnet 10.9.0.0/24 doesn't contain"),
        ("10.9.0.0/24", "10.9.0.0", "", "network or broadcast"),
        ("10.9.0.0/24", "10.9.0.255", "", "network or broadcast"),
        ("10.9.0.0/24", "x", "", "invalid gateway x: invalid address"),
        ("10.9.0.0/24", "", "10.9.0.0/16", "bigger than its parent subnet"),
        ("10.9.0.0/24", "", "10.8.0.0/24", "doesn't contain ip-range"),
        ("10.9.0.0/24", "10.9.0.1", "10.9.0.0/31", "no address to hand out"),
    ],
)
def test_validate_network_refuses_bad_input_with_invalid_argument(subnet, gateway, ip_range, words):
    with pytest.raises(InvalidArgument, match=words):
        validate_network(subnet, gateway, ip_range)


def test_validate_network_refuses_overlap_in_dockers_words():
    with pytest.raises(FailedPrecondition, match="Pool overlaps with other one"):
        validate_network("10.9.0.0/24", taken=[net("10.0.0.0/12")])
    assert validate_network("10.9.0.0/24", taken=[net("10.9.1.0/24")]).subnet == net("10.9.0.0/24")


def test_parse_address_refuses_nonsense_and_ipv6():
    assert parse_address("10.0.0.1") == addr("10.0.0.1")
    with pytest.raises(InvalidArgument):
        parse_address("10.0.0.256")
    with pytest.raises(InvalidArgument):
        parse_address("::1")


def test_addresses_go_round_robin_after_last_and_wrap():
    config = config_for(net("10.0.0.0/29"))  # hosts .1-.6, .1 the gateway
    assert next_address(config, None, set()) == addr("10.0.0.2")
    assert next_address(config, addr("10.0.0.2"), set()) == addr("10.0.0.3")
    # a freed address is not handed out again at once
    assert next_address(config, addr("10.0.0.3"), {addr("10.0.0.2")}) == addr("10.0.0.4")
    # wrap: after the last host comes the first free one
    assert next_address(config, addr("10.0.0.6"), {addr("10.0.0.2")}) == addr("10.0.0.3")
    # a last outside the range (a static address, a changed range) starts over at the bottom
    assert next_address(config, addr("192.168.0.1"), set()) == addr("10.0.0.2")


def test_exhaustion_is_a_clear_error():
    config = config_for(net("10.0.0.0/30"))
    assert next_address(config, None, set()) == addr("10.0.0.2")
    with pytest.raises(FailedPrecondition, match="no available addresses"):
        next_address(config, addr("10.0.0.2"), {addr("10.0.0.2")})


def test_static_address_may_be_outside_the_range_but_not_the_subnet():
    config = validate_network("10.0.0.0/24", "", "10.0.0.128/25")
    assert check_static(config, addr("10.0.0.5"), set()) == addr("10.0.0.5")
    with pytest.raises(InvalidArgument, match="out of range"):
        check_static(config, addr("10.0.1.5"), set())
    with pytest.raises(InvalidArgument, match="network or broadcast"):
        check_static(config, addr("10.0.0.255"), set())
    with pytest.raises(AlreadyExists, match="Address already in use"):
        check_static(config, addr("10.0.0.1"), set())
    with pytest.raises(AlreadyExists, match="Address already in use"):
        check_static(config, addr("10.0.0.5"), {addr("10.0.0.5")})


@st.composite
def configs(draw: st.DrawFn) -> NetworkConfig:
    prefix = draw(st.integers(24, 30))
    subnet = IPv4Network((0x0A000000, prefix))
    hosts = list(subnet.hosts())
    gateway = draw(st.sampled_from(hosts))
    ip_range = None
    if draw(st.booleans()):
        range_prefix = draw(st.integers(prefix, 32))
        ranges = list(subnet.subnets(new_prefix=range_prefix))
        ip_range = draw(st.sampled_from(ranges))
    config = NetworkConfig(subnet, gateway, ip_range)
    if config.dynamic_count() == 0:
        return NetworkConfig(subnet, gateway)
    return config


@given(configs(), st.data())
def test_allocations_are_unique_in_range_and_never_reserved(config, data):
    low, high = config.dynamic_bounds()
    used: set[IPv4Address] = set()
    last = None
    order = []
    gateway = int(config.gateway)
    for _ in range(config.dynamic_count()):
        picked = next_address(config, last, used)
        if last is not None:
            # the model of round-robin: the first free one above `last`, if there is one
            above = [
                v
                for v in range(int(last) + 1, high + 1)
                if v != gateway and IPv4Address(v) not in used
            ]
            if above:
                assert int(picked) == above[0]
        assert picked not in used
        assert picked in config.subnet
        assert picked in (config.ip_range or config.subnet)
        assert picked not in (
            config.subnet.network_address,
            config.subnet.broadcast_address,
            config.gateway,
        )
        used.add(picked)
        order.append(picked)
        last = picked
        # now and then release the oldest one
        if data.draw(st.booleans()) and len(order) > 1:
            freed = order.pop(0)
            used.discard(freed)
    # filling from empty hands addresses out in increasing order (round-robin, no wrap yet)
    fresh: set[IPv4Address] = set()
    last = None
    for _ in range(config.dynamic_count()):
        picked = next_address(config, last, fresh)
        assert last is None or picked > last
        fresh.add(picked)
        last = picked
    with pytest.raises(FailedPrecondition):
        next_address(config, last, fresh)
    assert low <= int(min(fresh))
    assert int(max(fresh)) <= high
