"""A thin ctypes binding of libbpf (libbpf1): open and load an object file, find
its maps and programs, fill maps, run a program on a buffer
(``BPF_PROG_TEST_RUN``).  Only what hopgate uses; every call that fails raises
``BpfError`` with the kernel's reason."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import NamedTuple

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)


# A map's key or value: a ctypes structure or scalar.
CValue = ctypes.Structure | ctypes.c_uint32 | ctypes.c_uint8


class BpfError(OSError):
    pass


class _TestRunOpts(ctypes.Structure):
    # struct bpf_test_run_opts (libbpf 1.1, bpf.h)
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("data_in", ctypes.c_void_p),
        ("data_out", ctypes.c_void_p),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_void_p),
        ("ctx_out", ctypes.c_void_p),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("repeat", ctypes.c_int),
        ("duration", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
    ]


class _XdpMd(ctypes.Structure):
    # struct xdp_md (linux/bpf.h): the context a test run starts from
    _fields_ = [
        ("data", ctypes.c_uint32),
        ("data_end", ctypes.c_uint32),
        ("data_meta", ctypes.c_uint32),
        ("ingress_ifindex", ctypes.c_uint32),
        ("rx_queue_index", ctypes.c_uint32),
        ("egress_ifindex", ctypes.c_uint32),
    ]


class RunResult(NamedTuple):
    verdict: int  # XDP_PASS, XDP_REDIRECT...
    frame: bytes  # the frame as the program left it


def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("bpf") or "libbpf.so.1"
    lib = ctypes.CDLL(name, use_errno=True)
    vp, i, u32, u64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64
    for fn, res, args in (
        ("bpf_object__open_file", vp, [ctypes.c_char_p, vp]),
        ("bpf_object__load", i, [vp]),
        ("bpf_object__close", None, [vp]),
        ("bpf_object__find_map_fd_by_name", i, [vp, ctypes.c_char_p]),
        ("bpf_object__find_program_by_name", vp, [vp, ctypes.c_char_p]),
        ("bpf_object__find_map_by_name", vp, [vp, ctypes.c_char_p]),
        ("bpf_map__key_size", u32, [vp]),
        ("bpf_map__value_size", u32, [vp]),
        ("bpf_program__fd", i, [vp]),
        ("bpf_map_update_elem", i, [i, vp, vp, u64]),
        ("bpf_map_lookup_elem", i, [i, vp, vp]),
        ("bpf_prog_test_run_opts", i, [i, ctypes.POINTER(_TestRunOpts)]),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


class BpfObject:
    """A loaded object file (its maps created, its programs verified)."""

    def __init__(self, path: Path) -> None:
        self._lib = _lib()
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise BpfError(
                ctypes.get_errno(), f"cannot open {path}: {os.strerror(ctypes.get_errno())}"
            )
        self._obj = obj
        err = self._lib.bpf_object__load(obj)
        if err:
            self.close()
            raise BpfError(-err, f"cannot load {path}: {os.strerror(-err)}")

    def close(self) -> None:
        if self._obj:
            self._lib.bpf_object__close(self._obj)
            self._obj = None

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def map_fd(self, name: str) -> int:
        fd = int(self._lib.bpf_object__find_map_fd_by_name(self._obj, name.encode()))
        if fd < 0:
            raise BpfError(-fd, f"no map {name!r}")
        return fd

    def map_sizes(self, name: str) -> tuple[int, int]:
        """The key and value sizes the object file gives map ``name``."""
        m = self._lib.bpf_object__find_map_by_name(self._obj, name.encode())
        if not m:
            raise BpfError(2, f"no map {name!r}")
        return int(self._lib.bpf_map__key_size(m)), int(self._lib.bpf_map__value_size(m))

    def prog_fd(self, name: str) -> int:
        prog = self._lib.bpf_object__find_program_by_name(self._obj, name.encode())
        if not prog:
            raise BpfError(2, f"no program {name!r}")
        return int(self._lib.bpf_program__fd(prog))

    def update(self, map_name: str, key: CValue, value: CValue) -> None:
        err = self._lib.bpf_map_update_elem(
            self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value), 0
        )
        if err:
            raise BpfError(-err, f"{map_name}: {os.strerror(-err)}")

    def test_run(self, prog: str, frame: bytes, ingress_ifindex: int) -> RunResult:
        """Run ``prog`` once on ``frame`` as if it arrived on ``ingress_ifindex``
        (a device of this network namespace)."""
        data_in = ctypes.create_string_buffer(frame, len(frame))
        data_out = ctypes.create_string_buffer(len(frame) + 256)
        md = _XdpMd(0, len(frame), 0, ingress_ifindex, 0, 0)
        opts = _TestRunOpts(
            sz=ctypes.sizeof(_TestRunOpts),
            data_in=ctypes.cast(data_in, ctypes.c_void_p),
            data_out=ctypes.cast(data_out, ctypes.c_void_p),
            data_size_in=len(frame),
            data_size_out=len(data_out),
            ctx_in=ctypes.cast(ctypes.pointer(md), ctypes.c_void_p),
            ctx_size_in=ctypes.sizeof(md),
            repeat=1,
        )
        err = self._lib.bpf_prog_test_run_opts(self.prog_fd(prog), ctypes.byref(opts))
        if err:
            raise BpfError(-err, f"test run of {prog}: {os.strerror(-err)}")
        return RunResult(opts.retval, data_out.raw[: opts.data_size_out])
