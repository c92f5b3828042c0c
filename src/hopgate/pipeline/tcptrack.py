"""TCP connection tracking as Linux's nf_conntrack_proto_tcp does it: a state
table, and the sequence-window checks that keep a forged segment from moving a
connection's state (docs/behaviour.md, "Connection tracking").

Theory of operation.  Each segment is classified by its flags into one of six
indexes (RST before SYN before FIN before ACK, as Linux).  ``TRANSITIONS``
gives, for the direction it travels and the connection's current state, the
next state, or one of two verdicts: ``IV`` (invalid: the segment cannot be part
of this connection in this state) and ``IG`` (ignored: it may be the sign that
the endpoints know something we do not — a SYN on an established tuple — so it
passes without changing anything, and it is remembered in case the other side
confirms it).  A segment that changes state must also lie in the window each
side has advertised (``_in_window``, Linux's tcp_in_window with its four checks);
an RST must hit the exact next sequence number to close an established
connection (RFC 5961: any other in-window RST passes so the endpoint can answer
with a challenge ACK, but the state does not move).

Per direction the tracker keeps Linux's ``td_end`` (highest sequence sent),
``td_maxend`` (highest sequence the other side allows), ``td_maxwin`` (largest
window seen), ``td_maxack`` (highest ack sent), the window scale and a few
flags, in one compact array per connection.
"""

from __future__ import annotations

from array import array
from enum import IntEnum
from struct import Struct

from hopgate.packet import l4
from hopgate.packet.types import Buffer

ORIG = 0
REPLY = 1

_MASK = 0xFFFFFFFF
MAX_ACK_WINDOW = 66000  # Linux's MAXACKWINDOW floor


class TcpState(IntEnum):
    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9  # simultaneous open: a SYN from each side


class Verdict(IntEnum):
    OK = 0  # part of the connection; state and deadline move
    IGNORED = 1  # passes, changes nothing
    INVALID = 2  # impossible in this state: dropped
    OUT_OF_WINDOW = 3  # outside the window: dropped (unless be_liberal, for all but RST)
    REOPEN = 4  # a SYN on a finished connection's tuple: forget it, start anew
    CLOSE_NOW = 5  # the only answer to a new connection was RST: forget it at once


# Segment indexes (Linux's get_conntrack_index).
SYN, SYNACK, FIN, ACK, RST, NONE = range(6)

_S = TcpState
NO, SS, SR, ES, FW, CW, LA, TW, CL, S2 = (
    _S.NONE, _S.SYN_SENT, _S.SYN_RECV, _S.ESTABLISHED, _S.FIN_WAIT,
    _S.CLOSE_WAIT, _S.LAST_ACK, _S.TIME_WAIT, _S.CLOSE, _S.SYN_SENT2,
)  # fmt: skip
IV = -1
IG = -2

# TRANSITIONS[direction][index][state]; states in TcpState order.
TRANSITIONS: tuple[tuple[tuple[int, ...], ...], ...] = (
    (  # ORIGINAL  sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        (SS, SS, IG, IG, IG, IG, IG, SS, SS, S2),  # syn
        (IV, IV, SR, IV, IV, IV, IV, IV, IV, SR),  # syn-ack
        (IV, IV, FW, FW, LA, LA, LA, TW, CL, IV),  # fin
        (ES, IV, ES, ES, CW, CW, TW, TW, CL, IV),  # ack
        (IV, CL, CL, CL, CL, CL, CL, CL, CL, CL),  # rst
        (IV, IV, IV, IV, IV, IV, IV, IV, IV, IV),  # none
    ),
    (  # REPLY     sNO sSS sSR sES sFW sCW sLA sTW sCL sS2
        (IV, S2, IV, IV, IV, IV, IV, SS, IV, S2),  # syn
        (IV, SR, IG, IG, IG, IG, IG, IG, IG, SR),  # syn-ack
        (IV, IV, FW, FW, LA, LA, LA, TW, CL, IV),  # fin
        (IV, IG, SR, ES, CW, CW, TW, TW, CL, IG),  # ack
        (IV, CL, CL, CL, CL, CL, CL, CL, CL, CL),  # rst
        (IV, IV, IV, IV, IV, IV, IV, IV, IV, IV),  # none
    ),
)

# Per-direction fields in the tracker array, at base 0 (original) or _PEER (reply).
END, MAXEND, MAXWIN, MAXACK, SCALE, FLAGS = range(6)
_PEER = 6
# Fields about the last segment, for re-synchronising after an ignored SYN.
LAST_INDEX, LAST_DIR, LAST_END = 12, 13, 14
FIELDS = 15

F_MAXACK_SET = 1
F_DATA_UNACKNOWLEDGED = 2
F_BE_LIBERAL = 4
F_CLOSE_INIT = 8  # this side sent the first FIN
F_WINDOW_SCALE = 16  # this side offered window scaling in its SYN


def index_of(flags: int) -> int:
    if flags & l4.TCP_RST:
        return RST
    if flags & l4.TCP_SYN:
        return SYNACK if flags & l4.TCP_ACK else SYN
    if flags & l4.TCP_FIN:
        return FIN
    if flags & l4.TCP_ACK:
        return ACK
    return NONE


def may_start(flags: int) -> bool:
    """Whether a segment can open a connection: a SYN, or a plain ACK (picked up
    in mid-stream, as nf_conntrack_tcp_loose allows)."""
    return TRANSITIONS[ORIG][index_of(flags)][NO] >= 0


def _before(a: int, b: int) -> bool:
    """a < b in sequence space."""
    return ((a - b) & _MASK) > 0x7FFFFFFF


def _window_scale(frame: Buffer, at: int, stop: int) -> int:
    """The window scale option of a SYN (options from ``at`` + 20 to ``stop``), or -1."""
    i = at + 20
    while i < stop:
        kind = frame[i]
        if kind == 0:
            break
        if kind == 1:
            i += 1
            continue
        if i + 1 >= stop:
            break
        size = frame[i + 1]
        if size < 2:
            break
        if kind == 3 and size == 3 and i + 2 < stop:
            return min(frame[i + 2], 14)
        i += size
    return -1


class Segment:
    """What the tracker reads of one segment."""

    __slots__ = ("ack", "end", "flags", "index", "options_end", "seq", "win")

    def __init__(self, frame: Buffer, at: int, end: int) -> None:
        seq, self.ack, offset, flags, self.win = _HEADER.unpack_from(frame, at + 4)
        self.seq = seq
        doff = (offset >> 4) * 4
        self.options_end = min(at + doff, end)  # where the header's options stop
        self.flags = flags
        self.index = _INDEX_OF[flags]
        data = end - at - doff
        self.end = (seq + (data if data > 0 else 0) + _SYN_FIN_LENGTH[flags]) & _MASK


_HEADER = Struct("!IIBBH")  # from byte 4: sequence, ack, data offset, flags, window
_INDEX_OF = tuple(index_of(flags) for flags in range(256))
_SYN_FIN_LENGTH = tuple(bool(f & l4.TCP_SYN) + bool(f & l4.TCP_FIN) for f in range(256))


def new_tracker() -> array[int]:
    t = array("I", bytes(4 * FIELDS))
    t[LAST_INDEX] = NONE
    return t


def _peer_init_from_syn(t: array[int], base: int, seg: Segment, scale: int) -> None:
    t[base + END] = t[base + MAXEND] = seg.end
    t[base + MAXWIN] = seg.win or 1
    t[base + MAXACK] = 0
    t[base + FLAGS] = F_WINDOW_SCALE if scale >= 0 else 0
    t[base + SCALE] = max(scale, 0)


def pickup(t: array[int], seg: Segment) -> None:
    """A connection first seen in mid-stream: trust this segment, and be liberal
    with both sides' windows until the history is learned (as Linux)."""
    t[END] = seg.end
    t[MAXWIN] = seg.win or 1
    t[MAXEND] = (seg.end + t[MAXWIN]) & _MASK
    t[FLAGS] = t[_PEER + FLAGS] = F_BE_LIBERAL


# Module constants: an enum attribute or another module's global costs a lookup
# on every segment.
_SYN, _ACK, _RST = l4.TCP_SYN, l4.TCP_ACK, l4.TCP_RST
_V_OK, _V_IGNORED, _V_INVALID = Verdict.OK, Verdict.IGNORED, Verdict.INVALID
_V_OUT, _V_REOPEN = Verdict.OUT_OF_WINDOW, Verdict.REOPEN
_HALF = 0x7FFFFFFF  # a - b, masked, above this: a is before b in sequence space


def in_window(
    t: array[int], direction: int, state: int, seg: Segment, frame: Buffer, at: int
) -> bool:
    """Linux's tcp_in_window: check the segment against both sides' windows and,
    if it passes, learn from it.  ``state`` is the connection's state before it.
    (``((a - b) & _MASK) > _HALF`` is ``_before(a, b)``, written out: this runs
    for every segment.)"""
    s = _PEER if direction else 0
    r = _PEER - s
    seq, ack, end, win = seg.seq, seg.ack, seg.end, seg.win
    flags = seg.flags
    syn = flags & _SYN
    if t[s + MAXWIN] == 0:
        # The first segment seen in this direction.
        if syn:
            scale = _window_scale(frame, at, seg.options_end)
            _peer_init_from_syn(t, s, seg, scale)
            if scale < 0 or (direction == REPLY and not t[r + FLAGS] & F_WINDOW_SCALE):
                t[s + SCALE] = t[r + SCALE] = 0  # scaling only when both SYNs offer it
            if not flags & _ACK:
                return True
        else:
            t[s + END] = end
            swin = win << t[s + SCALE]
            t[s + MAXWIN] = swin or 1
            t[s + MAXEND] = (end + t[s + MAXWIN]) & _MASK
            if t[r + MAXWIN] == 0:
                t[r + END] = t[r + MAXEND] = ack
            elif ack == (t[r + END] + 1) & _MASK:
                t[r + END] = ack  # likely the answer to a keepalive
    elif (
        syn
        and ((state == SS and direction == ORIG) or (state == SR and direction == REPLY))
        and _before(t[s + END], end)
    ):
        # A SYN (or SYN-ACK) sent again with a newer sequence number: the
        # endpoint started over (RFC 793).
        _peer_init_from_syn(t, s, seg, _window_scale(frame, at, seg.options_end))
    # Both sides' fields at once (one unpack costs about what three reads do).
    if direction:
        (r_end, r_maxend, r_maxwin, _, _, r_flags,
         s_end, s_maxend, s_maxwin, s_maxack, s_scale, s_flags, *_) = t  # fmt: skip
    else:
        (s_end, s_maxend, s_maxwin, s_maxack, s_scale, s_flags,
         r_end, r_maxend, r_maxwin, _, _, r_flags, *_) = t  # fmt: skip
    if not flags & _ACK:
        ack = r_end  # as if it acknowledged what we last saw
    elif flags & _RST and ack == 0:
        ack = r_end  # some stacks send RST+ACK with ack 0
    if flags & _RST and seq == 0 and state == SS:
        seq = end = s_end  # the RST answering a SYN
    max_ack_window = s_maxwin if s_maxwin > MAX_ACK_WINDOW else MAX_ACK_WINDOW
    if not (
        ((seq - s_maxend - 1) & _MASK) > _HALF  # I: not beyond what the receiver allows
        and ((s_end - r_maxwin - 1 - end) & _MASK) > _HALF  # II: not too old
        and ((ack - r_end - 1) & _MASK) > _HALF  # III: acks nothing unsent
        and ((r_end - max_ack_window - 1 - ack) & _MASK) > _HALF  # IV: not too old an ack
    ):
        return bool((s_flags | r_flags) & F_BE_LIBERAL) and not flags & _RST
    if not syn:
        win <<= s_scale
    if s_maxwin < win:
        t[s + MAXWIN] = min(win, _MASK)
    if ((s_end - end) & _MASK) > _HALF:
        t[s + END] = end
        s_flags |= F_DATA_UNACKNOWLEDGED
    if flags & _ACK:
        if not s_flags & F_MAXACK_SET:
            t[s + MAXACK] = ack
            s_flags |= F_MAXACK_SET
        elif ((s_maxack - ack) & _MASK) > _HALF:
            t[s + MAXACK] = ack
    t[s + FLAGS] = s_flags
    if r_maxwin and ((s_maxend - end) & _MASK) > _HALF:
        t[r + MAXWIN] = min(r_maxwin + ((end - s_maxend) & _MASK), _MASK)
    if not (((ack + win) - r_maxend) & _MASK) > _HALF:
        t[r + MAXEND] = (ack + win + (win == 0)) & _MASK
    if ack == r_end and r_flags & F_DATA_UNACKNOWLEDGED:
        t[r + FLAGS] = r_flags & ~F_DATA_UNACKNOWLEDGED & 0xFF
    return True


def _resync(t: array[int], direction: int) -> None:
    """The other side answered a SYN we ignored: both endpoints agree on a new
    connection that our state had missed.  Start the windows again from that SYN."""
    s = _PEER if t[LAST_DIR] else 0
    for i in range(_PEER):
        t[i] = t[_PEER + i] = 0
    t[s + END] = t[s + MAXEND] = t[LAST_END]
    t[s + MAXWIN] = 1


def track(
    t: array[int], state: int, direction: int, seg: Segment, frame: Buffer, at: int, liberal: bool
) -> tuple[Verdict, int]:
    """Linux's tcp_packet for one segment: the verdict and the state after it."""
    index = seg.index
    new = TRANSITIONS[direction][index][state]
    if new == SS and state >= TW and direction == ORIG:
        return _V_REOPEN, state
    if new == IG or (new == SS and state >= TW):
        if (
            index == SYNACK
            and t[LAST_INDEX] == SYN
            and t[LAST_DIR] != direction
            and seg.ack == t[LAST_END]
        ):
            _resync(t, direction)
            state, new = SS, SR
        else:
            t[LAST_INDEX], t[LAST_DIR], t[LAST_END] = index, direction, seg.end
            return _V_IGNORED, state
    if new == IV:
        return _V_INVALID, state
    r = 0 if direction else _PEER
    if index == RST and t[r + FLAGS] & F_MAXACK_SET:
        if _before(seg.seq, t[r + MAXACK]):
            return _V_OUT, state
        if state == ES and seg.seq != t[r + MAXACK]:
            train = t[LAST_INDEX] == ACK and t[LAST_DIR] == direction and seg.seq == t[LAST_END]
            if not train:
                # RFC 5961: not the exact sequence the other side expects.  It
                # passes (the endpoint answers with a challenge ACK) but does not
                # end the connection.
                new = state
    if not in_window(t, direction, state, seg, frame, at) and (not liberal or index == RST):
        return _V_OUT, state
    t[LAST_INDEX], t[LAST_DIR], t[LAST_END] = index, direction, seg.end
    if new == FW and state != FW:
        t[(_PEER if direction else 0) + FLAGS] |= F_CLOSE_INIT
    return _V_OK, new


def be_liberal(t: array[int]) -> None:
    """Take this connection's segments outside the windows too (never a RST),
    as for one picked up in mid-stream: its tracker may lag behind what the
    endpoints have sent (restored from a checkpoint)."""
    t[FLAGS] |= F_BE_LIBERAL
    t[_PEER + FLAGS] |= F_BE_LIBERAL


def unacknowledged(t: array[int]) -> bool:
    """Either side has sent data the other has not acknowledged yet."""
    return bool((t[FLAGS] | t[_PEER + FLAGS]) & F_DATA_UNACKNOWLEDGED)
