"""The network interface a machine's processes use to reach the others, settled before the process
group forms.

Gloo (the CPU backend) binds to the address the host name resolves to. On many Debian and Ubuntu
machines that is 127.0.0.1 (``/etc/hosts``): every machine then tells the others to call it on
loopback, and the group fails after a long wait with a raw ``connectFullMesh`` traceback. So,
under a launch of several machines (``MASTER_ADDR`` not this host's loopback):

* ``GLOO_SOCKET_IFNAME`` set: each interface it names must exist here, be up, have an address,
  and not be loopback; otherwise one line names the interface to set;
* not set, and the host name resolves to loopback (or not at all): the interface the kernel
  routes to ``MASTER_ADDR`` through is set as ``GLOO_SOCKET_IFNAME``, and said once per machine
  (the choice of a user who set nothing is what they would have set);
* the main process's address unreachable (no route) or not resolvable: one line, before any wait;
* ``MASTER_ADDR`` loopback here while torchrun's store is not on this host (the c10d rendezvous of
  machines whose host name resolves to loopback, without ``PET_LOCAL_ADDR``): one line.

NCCL picks its interface itself (leaving out loopback and docker); ``NCCL_SOCKET_IFNAME`` chooses
another. Nothing here runs for one process or a launch on one host.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from typing import Callable, Mapping, MutableMapping

import psutil

from ..core.errors import UserError

HOW = "set GLOO_SOCKET_IFNAME (and NCCL_SOCKET_IFNAME on GPUs) on each machine"


class NetworkError(UserError):
    """This machine cannot reach the main process, or is told to use an interface that cannot."""


def _is_loopback(address: str) -> bool:
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def _resolve(host: str) -> list[str]:
    try:
        return sorted({info[4][0] for info in socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)})
    except OSError:
        return []


def local_interfaces() -> dict[str, list[str]]:
    """Every interface that is up and has an IPv4 or IPv6 address: name -> addresses."""
    stats = psutil.net_if_stats()
    found: dict[str, list[str]] = {}
    for name, addresses in psutil.net_if_addrs().items():
        ips = [a.address.split("%")[0] for a in addresses if a.family in (socket.AF_INET, socket.AF_INET6)]
        if ips and name in stats and stats[name].isup:
            found[name] = ips
    return found


def route_source(address: str) -> str | None:
    """The local address the kernel would send from to reach ``address`` (no packet is sent), or
    None when there is no route to it."""
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((address, 9))
        except OSError:
            return None
        return probe.getsockname()[0]


def _named(interfaces: Mapping[str, list[str]]) -> str:
    return ", ".join(f"{name} ({' '.join(ips)})" for name, ips in sorted(interfaces.items())) or "none"


def _check_named(names: str, main: str, interfaces: Mapping[str, list[str]], towards: str | None) -> None:
    suggestion = f" (the one that reaches {main}: {towards})" if towards else ""
    for name in filter(None, (n.strip() for n in names.split(","))):
        if name not in interfaces:
            raise NetworkError(f"GLOO_SOCKET_IFNAME={names}: this machine has no interface {name} that is up with an "
                               f"address (it has {_named(interfaces)}); set it to one of those{suggestion}")
        if all(_is_loopback(ip) for ip in interfaces[name]):
            raise NetworkError(f"GLOO_SOCKET_IFNAME={names}: {name} is loopback, which the other machines cannot "
                               f"reach; set it to the interface on their network{suggestion}")


def _check_store_here(env: Mapping[str, str], main: str, resolved: list[str]) -> None:
    """MASTER_ADDR resolves to loopback: right when the launch is on this host, where torchrun's
    agent already serves the store at MASTER_PORT. Refused there, the store is on another machine
    whose rendezvous announced a host name that resolves to loopback here (c10d on such hosts)."""
    port = env.get("MASTER_PORT", "")
    if env.get("TORCHELASTIC_USE_AGENT_STORE") != "True" or not port.isdigit():
        return
    for address in resolved:
        try:
            socket.create_connection((address, int(port)), timeout=2).close()
            return
        except OSError:
            continue
    raise NetworkError(f"the main process's address came as MASTER_ADDR={main}, which is this machine's loopback, and "
                       f"nothing serves the rendezvous at port {port} here: the machine that hosts it announced a host "
                       "name that resolves to loopback; set PET_LOCAL_ADDR=<each machine's own address> on every "
                       "machine (torchrun's --local-addr)")


def settle_interface(environ: MutableMapping[str, str] | None = None,
                     say: Callable[[str], None] = print) -> str | None:
    """Check or choose gloo's interface for a launch across machines (see the module's text);
    returns the interface chosen here, or None when nothing was chosen. Raises ``NetworkError``."""
    env = os.environ if environ is None else environ
    main = env.get("MASTER_ADDR", "")
    if int(env.get("WORLD_SIZE", "1")) < 2 or not main:
        return None
    resolved = _resolve(main)
    if not resolved:
        raise NetworkError(f"the main process's address {main} (MASTER_ADDR, from --main_process_ip) does not resolve "
                           "on this machine; pass its IP address")
    if all(_is_loopback(a) for a in resolved):
        _check_store_here(env, main, resolved)
        return None  # every machine on this host: loopback is right
    address, interfaces = resolved[0], local_interfaces()
    source = route_source(address)
    if source is None:
        raise NetworkError(f"the main process's address {main} is unreachable from this machine (no route to it); "
                           f"check --main_process_ip, or this machine's network ({_named(interfaces)})")
    towards = next((name for name, ips in interfaces.items() if source in ips), None)
    if env.get("GLOO_SOCKET_IFNAME"):
        _check_named(env["GLOO_SOCKET_IFNAME"], main, interfaces, towards)
        return None
    own = _resolve(socket.gethostname())
    if own and not all(_is_loopback(a) for a in own):
        return None  # gloo binds to the host name's address, which others can reach
    if towards is None or _is_loopback(source):
        raise NetworkError(f"this host's name resolves to loopback and no interface routes to {main}: {HOW} to the "
                           f"interface on the other machines' network (here: {_named(interfaces)})")
    env["GLOO_SOCKET_IFNAME"] = towards
    if env.get("LOCAL_RANK", "0") == "0":
        say(f"Network: this host's name resolves to loopback; using interface {towards} ({source}), the one that "
            f"routes to the main process at {main} (GLOO_SOCKET_IFNAME={towards}; set it to choose another)")
    return towards
