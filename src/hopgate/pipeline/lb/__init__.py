"""The full-NAT L4 load balancer (docs/behaviour.md, "Load balancer").

- ``service``: services and backends, the schedulers, ``MaglevControl`` (where
  Maglev tables are handed to the control plane and installed);
- ``runtime``: what the operator changed at run time (admin state, weight), in
  one place that services built again can be given;
- ``verdicts``: what a health verdict or an operator's change does;
- ``maglev``: the Maglev lookup table and the flow hash every node shares;
- ``fnat``: full NAT: a new flow's backend, its LIP and local port, the hops
  each side's packets go back to, a failed backend's connections;
- ``health``: health checks spoken from the data plane, rise and fall;
- ``cluster``: ``[relay]`` on a load balancer node (PMTU errors to the peers).

Its connections live in NAT's table: the router's ``Nat`` (pipeline/nat) is the
facade for both.
"""

from hopgate.pipeline.lb.fnat import Fnat, Hop
from hopgate.pipeline.lb.service import (
    AdminState,
    Backend,
    BackendDown,
    BackendSpec,
    EchoPolicy,
    HealthKind,
    HealthSpec,
    MaglevControl,
    RingRequest,
    Scheduler,
    Service,
    Services,
    ServiceSpec,
    flow_key,
)

__all__ = [
    "AdminState",
    "Backend",
    "BackendDown",
    "BackendSpec",
    "EchoPolicy",
    "Fnat",
    "HealthKind",
    "HealthSpec",
    "Hop",
    "MaglevControl",
    "RingRequest",
    "Scheduler",
    "Service",
    "ServiceSpec",
    "Services",
    "flow_key",
]
