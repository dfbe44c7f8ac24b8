"""A local fleet (``slmfleet up``) listens on loopback only, but for what Ray Serve hard-codes: every listening TCP
socket of the fleet's processes is on 127.0.0.1 or ::1, except each Serve replica's gRPC server, which Serve 2.60
binds to ``[::]`` itself (``serve/_private/replica.py``: ``add_port_to_grpc_server(self._server, "[::]:0")``) and
which answers only Ray's token-authenticated calls. The allow-list is that one entry; docs/architecture.md says why.
"""

import ipaddress

import psutil
import pytest

pytestmark = [pytest.mark.reliability, pytest.mark.timeout(120)]
SERVE_REPLICA = "ServeReplica:"  # Ray titles a replica's process ray::ServeReplica:<app>:<deployment>


def listening(fleet) -> list[tuple[str, str, int]]:
    """(process title, address, port) of every listening TCP socket of the fleet's process tree."""
    root = psutil.Process(fleet.proc.pid)
    found = []
    for proc in [root, *root.children(recursive=True)]:
        try:
            title = " ".join(proc.cmdline())[:80] or proc.name()
            sockets = proc.net_connections(kind="tcp")
        except psutil.Error:
            continue
        found += [(title, s.laddr.ip, s.laddr.port) for s in sockets if s.status == psutil.CONN_LISTEN]
    return found


def is_loopback(ip: str) -> bool:
    address = ipaddress.ip_address(ip.split("%", maxsplit=1)[0])
    mapped = getattr(address, "ipv4_mapped", None)
    return (mapped or address).is_loopback


def test_a_local_fleet_listens_on_loopback_only_but_for_serve_replica_grpc(fleet):
    sockets = listening(fleet)
    beyond = [(title, ip, port) for title, ip, port in sockets if not is_loopback(ip)]
    allowed = [(title, ip, port) for title, ip, port in beyond if SERVE_REPLICA in title]
    assert beyond == allowed, f"listening beyond loopback: {[s for s in beyond if s not in allowed]}"
    replicas = {p.pid for p in psutil.Process(fleet.proc.pid).children(recursive=True) if SERVE_REPLICA in
                " ".join(p.cmdline())}  # fmt: skip
    assert len(allowed) <= len(replicas), allowed  # one gRPC server a replica, no more
    loopback = len(sockets) - len(beyond)
    assert loopback >= 8, f"only {loopback} loopback sockets seen: the scan missed Ray's own servers ({sockets})"
    print(f"FIGURE: {loopback} listening sockets on loopback, {len(allowed)} Serve replica gRPC on [::]")
