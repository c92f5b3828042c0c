"""A thin ctypes binding of libbpf (libbpf1): open and load an object file, find
its maps and programs, fill, read and empty maps, attach a program to an
interface's XDP hook, run a program on a buffer (``BPF_PROG_TEST_RUN``), load a
program given as instructions.  Only what hopgate uses; every call that fails
raises ``BpfError`` with the kernel's reason."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path
from typing import Any, NamedTuple

XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT = range(5)

# How a program is attached (linux/if_link.h XDP_FLAGS_*): in the driver
# ("native") or on the generic path every device has ("generic", as skb).
XDP_FLAGS_UPDATE_IF_NOEXIST = 1 << 0
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
XDP_FLAGS_REPLACE = 1 << 4
ATTACH_FLAGS = {"native": XDP_FLAGS_DRV_MODE, "generic": XDP_FLAGS_SKB_MODE}

BPF_PROG_TYPE_XDP = 6
BPF_XDP = 37  # enum bpf_attach_type: an XDP link
# BPF_PROG_TEST_RUN sends the frames an XDP program returns XDP_TX for out of
# the ingress device (the kernel's own traffic generator, linux/bpf.h).
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1
BPF_F_LOCK = 1 << 2  # a map operation under the value's bpf_spin_lock


# A map's key or value: a ctypes structure or scalar.
CValue = ctypes.Structure | ctypes.c_uint32 | ctypes.c_uint8 | ctypes.c_uint64 | ctypes.Array[Any]


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


class _LinkCreateOpts(ctypes.Structure):
    # struct bpf_link_create_opts (libbpf 1.1): for an XDP link only ``flags``
    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("flags", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
        ("_rest", ctypes.c_uint8 * 48),
    ]


class _XdpAttachOpts(ctypes.Structure):
    # struct bpf_xdp_attach_opts (libbpf 1.0)
    _fields_ = [("sz", ctypes.c_size_t), ("old_prog_fd", ctypes.c_int)]


class _ProgInfo(ctypes.Structure):
    # struct bpf_prog_info (linux/bpf.h), as far as its name: the kernel fills
    # what the caller's size holds
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("tag", ctypes.c_uint8 * 8),
        ("jited_prog_len", ctypes.c_uint32),
        ("xlated_prog_len", ctypes.c_uint32),
        ("jited_prog_insns", ctypes.c_uint64),
        ("xlated_prog_insns", ctypes.c_uint64),
        ("load_time", ctypes.c_uint64),
        ("created_by_uid", ctypes.c_uint32),
        ("nr_map_ids", ctypes.c_uint32),
        ("map_ids", ctypes.c_uint64),
        ("name", ctypes.c_char * 16),
    ]


class _MapInfo(ctypes.Structure):
    # struct bpf_map_info (linux/bpf.h), as far as its name
    _fields_ = [
        ("type", ctypes.c_uint32),
        ("id", ctypes.c_uint32),
        ("key_size", ctypes.c_uint32),
        ("value_size", ctypes.c_uint32),
        ("max_entries", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("name", ctypes.c_char * 16),
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
        ("bpf_map_lookup_elem_flags", i, [i, vp, vp, u64]),
        ("bpf_map_lookup_and_delete_elem", i, [i, vp, vp]),
        ("bpf_map_delete_elem", i, [i, vp]),
        ("bpf_map_get_next_key", i, [i, vp, vp]),
        ("bpf_map_lookup_batch", i, [i, vp, vp, vp, vp, ctypes.POINTER(u32), vp]),
        ("bpf_prog_test_run_opts", i, [i, ctypes.POINTER(_TestRunOpts)]),
        ("bpf_xdp_attach", i, [i, i, u32, vp]),
        ("bpf_xdp_detach", i, [i, u32, vp]),
        ("bpf_prog_get_fd_by_id", i, [u32]),
        ("bpf_map_get_fd_by_id", i, [u32]),
        ("bpf_obj_get_info_by_fd", i, [i, vp, ctypes.POINTER(u32)]),
        ("bpf_map__reuse_fd", i, [vp, i]),
        ("bpf_link_create", i, [i, i, i, ctypes.POINTER(_LinkCreateOpts)]),
        ("bpf_xdp_query_id", i, [i, i, ctypes.POINTER(u32)]),
        ("bpf_prog_load", i, [i, ctypes.c_char_p, ctypes.c_char_p, vp, ctypes.c_size_t, vp]),
        ("libbpf_num_possible_cpus", i, []),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    return lib


_LIB: ctypes.CDLL | None = None


def lib() -> ctypes.CDLL:
    """libbpf, opened once."""
    global _LIB  # noqa: PLW0603 - one handle for the process
    if _LIB is None:
        _LIB = _lib()
    return _LIB


def _check(err: int, what: str) -> int:
    if err < 0:
        raise BpfError(-err, f"{what}: {os.strerror(-err)}")
    return err


def link(ifindex: int, prog_fd: int, mode: str) -> int:
    """Attach the XDP program ``prog_fd`` to interface ``ifindex`` (this network
    namespace's) in ``mode`` ("native" or "generic") through a BPF link: the
    program stays attached while the returned descriptor is open — closing it,
    or the process ending however it ends, detaches it.  Fails (EBUSY) if the
    interface has an XDP program already."""
    opts = _LinkCreateOpts(sz=ctypes.sizeof(_LinkCreateOpts), flags=ATTACH_FLAGS[mode])
    fd = lib().bpf_link_create(prog_fd, ifindex, BPF_XDP, ctypes.byref(opts))
    return _check(fd, f"attaching to interface {ifindex} ({mode})")


def attach(ifindex: int, prog_fd: int, mode: str) -> None:
    """Attach the XDP program ``prog_fd`` to interface ``ifindex`` in ``mode``
    until the interface goes: it outlives this process.  For the
    labs' and benchmarks' helper programs; refuses if there is one already."""
    flags = ATTACH_FLAGS[mode] | XDP_FLAGS_UPDATE_IF_NOEXIST
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, None), f"attaching to {ifindex}")


def attach_for_good(ifindex: int, prog_fd: int, mode: str, replacing: int | None) -> None:
    """Attach ``prog_fd`` to ``ifindex`` so that it stays when this process
    ends (the next hopgate takes it over, dataplane.py), in place of the
    program ``replacing`` (a descriptor) in one step if given, else only if the
    interface has none."""
    flags = ATTACH_FLAGS[mode]
    opts = None
    if replacing is None:
        flags |= XDP_FLAGS_UPDATE_IF_NOEXIST
    else:
        flags |= XDP_FLAGS_REPLACE
        opts = ctypes.byref(_XdpAttachOpts(ctypes.sizeof(_XdpAttachOpts), replacing))
    _check(lib().bpf_xdp_attach(ifindex, prog_fd, flags, opts), f"attaching to {ifindex} ({mode})")


def map_lookup(fd: int, key: CValue, value: CValue) -> bool:
    """Look ``key`` up in the map ``fd`` (one not of a loaded object: a program
    found attached); False if it is not there."""
    err = lib().bpf_map_lookup_elem(fd, ctypes.byref(key), ctypes.byref(value))
    if err == -2:
        return False
    _check(err, f"map {fd}")
    return True


def detach(ifindex: int, mode: str) -> None:
    """Detach whatever XDP program is attached to ``ifindex`` in ``mode``."""
    _check(lib().bpf_xdp_detach(ifindex, ATTACH_FLAGS[mode], None), f"detaching from {ifindex}")


class Attached(NamedTuple):
    """An XDP program found attached to an interface."""

    id: int
    mode: str  # "native" or "generic"
    name: str  # its name, as the kernel keeps it (15 characters at most)
    fd: int  # a descriptor of it (the caller closes it)
    maps: dict[str, int]  # descriptors of its maps, by name (the caller closes them)


def attached(ifindex: int) -> Attached | None:
    """The XDP program attached to ``ifindex`` in either mode, with its maps."""
    for mode in ATTACH_FLAGS:
        prog_id = attached_id(ifindex, mode)
        if prog_id:
            break
    else:
        return None
    fd = _check(lib().bpf_prog_get_fd_by_id(prog_id), f"program {prog_id}")
    try:
        info = _ProgInfo()
        size = ctypes.c_uint32(ctypes.sizeof(info))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)), "info")
        ids = (ctypes.c_uint32 * info.nr_map_ids)()
        again = _ProgInfo(nr_map_ids=info.nr_map_ids, map_ids=ctypes.addressof(ids))
        _check(lib().bpf_obj_get_info_by_fd(fd, ctypes.byref(again), ctypes.byref(size)), "maps")
        maps: dict[str, int] = {}
        try:
            for map_id in ids:
                mfd = _check(lib().bpf_map_get_fd_by_id(map_id), f"map {map_id}")
                minfo = _MapInfo()
                msize = ctypes.c_uint32(ctypes.sizeof(minfo))
                err = lib().bpf_obj_get_info_by_fd(mfd, ctypes.byref(minfo), ctypes.byref(msize))
                if err < 0:
                    os.close(mfd)
                    _check(err, f"map {map_id}")
                name = minfo.name.decode(errors="replace")
                if name in maps:  # .rodata and the like: not hopgate's tables
                    os.close(mfd)
                    continue
                maps[name] = mfd
        except BaseException:
            for mfd in maps.values():
                os.close(mfd)
            raise
    except BaseException:
        os.close(fd)
        raise
    return Attached(prog_id, mode, info.name.decode(errors="replace"), fd, maps)


def attached_id(ifindex: int, mode: str) -> int:
    """The id of the XDP program attached to ``ifindex`` in ``mode`` (0: none)."""
    prog_id = ctypes.c_uint32(0)
    flags = ATTACH_FLAGS[mode]
    _check(lib().bpf_xdp_query_id(ifindex, flags, ctypes.byref(prog_id)), f"querying {ifindex}")
    return prog_id.value


def load_instructions(name: str, instructions: bytes) -> int:
    """Load an XDP program given as raw eBPF instructions (8 bytes each);
    returns its descriptor (close it when done; an attachment keeps it)."""
    buf = ctypes.create_string_buffer(instructions, len(instructions))
    fd = lib().bpf_prog_load(
        BPF_PROG_TYPE_XDP, name.encode(), b"GPL", buf, len(instructions) // 8, None
    )
    return _check(fd, f"loading {name}")


# ``r0 = verdict; exit``: a program that returns one verdict for every frame.
def verdict_program(verdict: int) -> bytes:
    mov_r0 = bytes([0xB7, 0x00, 0x00, 0x00]) + verdict.to_bytes(4, "little")
    exit_ = bytes([0x95]) + bytes(7)
    return mov_r0 + exit_


BPF_FUNC_REDIRECT = 23


def redirect_program(ifindex: int) -> bytes:
    """An XDP program sending every frame out of ``ifindex`` (``bpf_redirect``):
    r1 = ifindex, r2 = 0 (flags), call, exit with what it returned."""
    mov_r1 = bytes([0xB7, 0x01, 0x00, 0x00]) + ifindex.to_bytes(4, "little")
    mov_r2 = bytes([0xB7, 0x02, 0x00, 0x00]) + bytes(4)
    call = bytes([0x85, 0x00, 0x00, 0x00]) + BPF_FUNC_REDIRECT.to_bytes(4, "little")
    exit_ = bytes([0x95]) + bytes(7)
    return mov_r1 + mov_r2 + call + exit_


def send_live(prog_fd: int, frame: bytes, ifindex: int, count: int, batch: int = 64) -> None:
    """Send ``frame`` ``count`` times out of ``ifindex`` from the kernel: an XDP
    program returning XDP_TX run in BPF_PROG_TEST_RUN's live-frames mode.  It
    keeps sending whatever the receiver drops; a signal ends it early."""
    data = ctypes.create_string_buffer(frame, len(frame))
    md = _XdpMd(0, len(frame), 0, ifindex, 0, 0)
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(data, ctypes.c_void_p),
        data_size_in=len(frame),
        ctx_in=ctypes.cast(ctypes.pointer(md), ctypes.c_void_p),
        ctx_size_in=ctypes.sizeof(md),
        repeat=count,
        flags=BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size=batch,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "live frames")


class BpfObject:
    """A loaded object file (its maps created, its programs verified)."""

    def __init__(self, path: Path, reuse: dict[str, int] | None = None) -> None:
        """``reuse``: map descriptors, by name, that the program uses in place of
        maps of its own (a program attached before: its tables, as they are)."""
        self._lib = lib()
        obj = self._lib.bpf_object__open_file(str(path).encode(), None)
        if not obj:
            raise BpfError(
                ctypes.get_errno(), f"cannot open {path}: {os.strerror(ctypes.get_errno())}"
            )
        self._obj = obj
        for name, fd in (reuse or {}).items():
            m = self._lib.bpf_object__find_map_by_name(obj, name.encode())
            err = self._lib.bpf_map__reuse_fd(m, fd) if m else -2
            if err:
                self.close()
                raise BpfError(-err, f"cannot take over map {name!r}: {os.strerror(-err)}")
        self._fds: dict[str, int] = {}  # map descriptors by name, found once
        # dump_chunk's buffers, by (map, chunk): made once.
        self._batch: dict[tuple[str, int], tuple[ctypes.Array[ctypes.c_char], ...]] = {}
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
        fd = self._fds.get(name)
        if fd is None:
            fd = int(self._lib.bpf_object__find_map_fd_by_name(self._obj, name.encode()))
            if fd < 0:
                raise BpfError(-fd, f"no map {name!r}")
            self._fds[name] = fd
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

    def delete(self, map_name: str, key: CValue) -> bool:
        """Remove ``key`` from the map; False if it was not there."""
        err = self._lib.bpf_map_delete_elem(self.map_fd(map_name), ctypes.byref(key))
        if err == -2:  # ENOENT
            return False
        _check(err, map_name)
        return True

    def lookup(self, map_name: str, key: CValue, value: CValue, *, lock: bool = False) -> bool:
        """Read ``key``'s value into ``value``; False if the map has no ``key``.
        ``lock``: under the value's ``bpf_spin_lock``, as the program holds it
        (``BPF_F_LOCK``), so that no half-made change is read."""
        err = self._lib.bpf_map_lookup_elem_flags(
            self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value), BPF_F_LOCK if lock else 0
        )
        if err == -2:
            return False
        _check(err, map_name)
        return True

    def lookup_and_delete(self, map_name: str, key: CValue, value: CValue) -> bool:
        """Read ``key``'s value into ``value`` and remove it, at once (nothing
        the program adds in between is lost); False if the map has no ``key``."""
        err = self._lib.bpf_map_lookup_and_delete_elem(
            self.map_fd(map_name), ctypes.byref(key), ctypes.byref(value)
        )
        if err == -2:
            return False
        _check(err, map_name)
        return True

    def keys(self, map_name: str, key_type: type[CValue]) -> list[CValue]:
        """Every key of a hash or LPM map (a snapshot: it may change meanwhile)."""
        fd = self.map_fd(map_name)
        out: list[CValue] = []
        prev: CValue | None = None
        while True:
            key = key_type()
            err = self._lib.bpf_map_get_next_key(
                fd, None if prev is None else ctypes.byref(prev), ctypes.byref(key)
            )
            if err == -2:
                return out
            _check(err, map_name)
            out.append(key)
            prev = key

    def dump(self, map_name: str, chunk: int = 4096) -> tuple[bytes, bytes]:
        """Every entry of a hash map, a chunk of entries a system call
        (``BPF_MAP_LOOKUP_BATCH``): its keys and its values, each packed back to
        back in the map's sizes."""
        out_k: list[bytes] = []
        out_v: list[bytes] = []
        token: int | None = None
        while True:
            keys, values, token = self.dump_chunk(map_name, token, chunk)
            out_k.append(keys)
            out_v.append(values)
            if token is None:
                return b"".join(out_k), b"".join(out_v)

    def dump_chunk(
        self, map_name: str, token: int | None, chunk: int = 4096
    ) -> tuple[bytes, bytes, int | None]:
        """Up to ``chunk`` entries of a hash map (one ``BPF_MAP_LOOKUP_BATCH``),
        from where ``token`` says (None: the start): their keys and values, and
        the token to go on from, or None if none are left.  Entries added or
        removed between two calls may be missed or read twice."""
        fd = self.map_fd(map_name)
        ksize, vsize = self.map_sizes(map_name)
        buffers = self._batch.get((map_name, chunk))
        if buffers is None:
            buffers = self._batch[(map_name, chunk)] = (
                ctypes.create_string_buffer(ksize * chunk),
                ctypes.create_string_buffer(vsize * chunk),
            )
        keys, values = buffers
        # The kernel's place in the map (a hash map's bucket).
        token_in = ctypes.c_uint64(token or 0)
        token_out = ctypes.c_uint64(0)
        count = ctypes.c_uint32(chunk)
        err = self._lib.bpf_map_lookup_batch(
            fd,
            None if token is None else ctypes.byref(token_in),
            ctypes.byref(token_out),
            keys,
            values,
            ctypes.byref(count),
            None,
        )
        if err and err != -2:  # ENOENT: the last chunk
            _check(err, f"{map_name}: batch lookup")
        n = count.value
        done = err == -2 or n == 0
        got_k, got_v = ctypes.string_at(keys, n * ksize), ctypes.string_at(values, n * vsize)
        return got_k, got_v, None if done else token_out.value

    def percpu_sums(self, map_name: str, entries: int, first: int = 0) -> list[int]:
        """``entries`` counters from ``first`` on of a per-CPU array of u64,
        each summed over the CPUs."""
        cpus = _check(self._lib.libbpf_num_possible_cpus(), "possible CPUs")
        values = (ctypes.c_uint64 * cpus)()
        sums = []
        for i in range(first, first + entries):
            if not self.lookup(map_name, ctypes.c_uint32(i), values):
                sums.append(0)
                continue
            sums.append(sum(values))
        return sums

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


# -- socket filters (hopgate relay's, xdp/relayfilter.c) ---------------------------------


def run_socket_filter(prog_fd: int, data: bytes) -> int:
    """Run a socket filter program once on ``data`` and return what it returned
    (0: not delivered; else the length to deliver).  The kernel makes a buffer
    of ``data`` as received on ``lo``: it takes the first 14 bytes as the
    Ethernet header (their destination MAC sets the packet type: the zero MAC is
    ``lo``'s own, PACKET_HOST) and the program sees what follows."""
    buf = ctypes.create_string_buffer(data, len(data))
    opts = _TestRunOpts(
        sz=ctypes.sizeof(_TestRunOpts),
        data_in=ctypes.cast(buf, ctypes.c_void_p),
        data_size_in=len(data),
        repeat=1,
    )
    _check(lib().bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)), "test run")
    return int(opts.retval)
