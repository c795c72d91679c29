"""Targets given by name: `dns:///name:port` stands for every address the name resolves to.

On Kubernetes a headless Service's name resolves to one address per ready replica
(deploy/k8s), so a client given `dns:///xgal-scorer.ns.svc.cluster.local:50051` spreads shards
over all of them. gRPC's own `dns:///` channel would pick one address per call; the client needs
each replica as a target of its own (a shard queue per replica, publishing to every one), so it
resolves the name itself, again at each call and when a replica is given up on mid-run: a
replica that went away is dropped, one that appeared is used.
"""

from __future__ import annotations

import socket
from collections.abc import Callable, Sequence

import grpc

from xgal.client.transport import ScorerError

PREFIX = "dns:///"

Lookup = Callable[..., list]


def is_name(spec: str) -> bool:
    return spec.startswith(PREFIX)


def split(spec: str) -> tuple[str, int]:
    """(host, port) of `dns:///host:port`."""
    rest = spec[len(PREFIX) :]
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in rest:
        raise ValueError(f"{spec!r}: a name target is dns:///host:port")
    return host.strip("[]"), int(port)


def resolve(specs: Sequence[str], lookup: Lookup | None = None) -> list[str]:
    """Each spec as host:port addresses: plain ones as given, names as every address they resolve
    to (in the resolver's order, each once). A name that resolves to nothing is an UNAVAILABLE
    ScorerError naming it."""
    lookup = lookup or socket.getaddrinfo
    out: list[str] = []
    for spec in specs:
        if not is_name(spec):
            out.append(spec)
            continue
        host, port = split(spec)
        try:
            found = lookup(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ScorerError(f"cannot resolve {spec}: {exc}", grpc.StatusCode.UNAVAILABLE) from None
        for family, *_, addr in found:
            ip = addr[0]
            out.append(f"[{ip}]:{addr[1]}" if family == socket.AF_INET6 else f"{ip}:{addr[1]}")
        if not found:
            raise ScorerError(f"{spec} resolves to no address", grpc.StatusCode.UNAVAILABLE)
    return list(dict.fromkeys(out))
