"""Which interface gloo uses on a launch across machines (training/network.py), decided from the
environment, the host name and the routes: the rules, with the machine's answers stood in. The
same rules on machines with their own addresses: tests/test_machines.py."""

from __future__ import annotations

import pytest

from mnist_addition.training import network
from mnist_addition.training.network import NetworkError, settle_interface

INTERFACES = {"lo": ["127.0.0.1", "::1"], "net0": ["198.51.100.2"], "net1": ["203.0.113.7"]}


@pytest.fixture
def machine(monkeypatch):
    """This machine: its name resolves to loopback, net0 routes to 198.51.100.0/24, nothing else routes."""
    names = {"vm": ["127.0.0.1"], "main.example": ["198.51.100.1"], "198.51.100.1": ["198.51.100.1"],
             "203.0.113.50": ["203.0.113.50"], "127.0.0.1": ["127.0.0.1"], "192.0.2.9": ["192.0.2.9"]}
    monkeypatch.setattr(network.socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(network, "_resolve", lambda host: names.get(host, []))
    monkeypatch.setattr(network, "local_interfaces", lambda: INTERFACES)
    monkeypatch.setattr(network, "route_source", lambda a: {"198.51.100.1": "198.51.100.2",
                                                           "203.0.113.50": "203.0.113.7"}.get(a))
    return names


def launch(main: str = "198.51.100.1", **extra: str) -> dict[str, str]:
    return {"WORLD_SIZE": "2", "MASTER_ADDR": main, "LOCAL_RANK": "0", **extra}


def test_the_interface_that_routes_to_the_main_process_is_chosen_and_said_once(machine):
    said, env = [], launch()
    assert settle_interface(env, said.append) == "net0"
    assert env["GLOO_SOCKET_IFNAME"] == "net0"
    assert len(said) == 1 and "net0 (198.51.100.2)" in said[0] and "GLOO_SOCKET_IFNAME" in said[0]
    said, env = [], launch("203.0.113.50", LOCAL_RANK="1")  # another network, another interface; rank 1 is silent
    assert settle_interface(env, said.append) == "net1" and env["GLOO_SOCKET_IFNAME"] == "net1" and not said
    env = launch("main.example")  # a name is resolved first
    assert settle_interface(env, said.append) == "net0"


@pytest.mark.parametrize("env", [{"WORLD_SIZE": "1", "MASTER_ADDR": "198.51.100.1"}, {"WORLD_SIZE": "2"},
                                 launch("127.0.0.1"), launch(GLOO_SOCKET_IFNAME="net0")])
def test_nothing_is_chosen_for_one_process_one_host_or_a_users_choice(machine, env):
    before = dict(env)
    assert settle_interface(env, pytest.fail) is None
    assert env == before


def test_a_host_name_that_others_can_reach_is_left_to_gloo(machine, monkeypatch):
    machine["vm"] = ["198.51.100.2"]
    env = launch()
    assert settle_interface(env, pytest.fail) is None and "GLOO_SOCKET_IFNAME" not in env


@pytest.mark.parametrize("env, says", [
    (launch(GLOO_SOCKET_IFNAME="eth9"), "no interface eth9 that is up with an address (it has lo (127.0.0.1 ::1), "
                                        "net0 (198.51.100.2), net1 (203.0.113.7)); set it to one of those "
                                        "(the one that reaches 198.51.100.1: net0)"),
    (launch(GLOO_SOCKET_IFNAME="lo"), "lo is loopback, which the other machines cannot reach"),
    (launch(GLOO_SOCKET_IFNAME="net0,eth9"), "no interface eth9"),
    (launch("192.0.2.9"), "192.0.2.9 is unreachable from this machine (no route to it)"),
    (launch("nowhere.invalid"), "nowhere.invalid (MASTER_ADDR, from --main_process_ip) does not resolve"),
])
def test_a_wrong_interface_or_an_unreachable_main_process_is_one_line(machine, env, says):
    with pytest.raises(NetworkError) as caught:
        settle_interface(env, pytest.fail)
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_without_an_interface_towards_the_main_process_the_line_names_the_variable(machine, monkeypatch):
    monkeypatch.setattr(network, "route_source", lambda a: "127.0.0.1")  # routed through loopback only
    with pytest.raises(NetworkError, match="set GLOO_SOCKET_IFNAME .* on each machine"):
        settle_interface(launch(), pytest.fail)


def test_the_real_machine_answers_are_read():
    """The stand-ins above replace these: here, on this machine, loopback is up and routes to itself."""
    assert "127.0.0.1" in [ip for ips in network.local_interfaces().values() for ip in ips]
    assert network.route_source("127.0.0.1") == "127.0.0.1"
    assert network._resolve("127.0.0.1") == ["127.0.0.1"]


def test_a_loopback_main_address_without_the_rendezvous_here_is_one_line(machine):
    """c10d on machines whose host name resolves to loopback: the store's host announced "vm", which
    is loopback on every machine; on the others nothing serves MASTER_PORT."""
    import socket

    with socket.create_server(("127.0.0.1", 0)) as store:
        here = launch("vm", TORCHELASTIC_USE_AGENT_STORE="True", MASTER_PORT=str(store.getsockname()[1]))
        assert settle_interface(here, pytest.fail) is None  # the launch is on this host: the store answers
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        elsewhere = launch("vm", TORCHELASTIC_USE_AGENT_STORE="True", MASTER_PORT=str(closed.getsockname()[1]))
        with pytest.raises(NetworkError, match="MASTER_ADDR=vm, which is this machine's loopback.*PET_LOCAL_ADDR"):
            settle_interface(elsewhere, pytest.fail)
