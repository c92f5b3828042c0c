"""The XDP fast path (issue 11): fastpath.c, built to fastpath.o by
scripts/bootstrap; its tables (tables.py); a thin libbpf binding (libbpf.py)."""
