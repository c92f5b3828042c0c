"""hopgate: a user-space router, NAT and FNAT load balancer for Linux that gets ICMP right."""

__version__ = "0.1.0"
