// SPDX-License-Identifier: GPL-2.0
/*
 * hopgate's XDP fast path (issue 11): routing (ECMP included) and NAT's and
 * the load balancer's UDP streams and established TCP connections, IPv4 and
 * IPv6 (docs/fastpath.md).
 *
 * The rule: never answer differently from the Python pipeline
 * (src/hopgate/pipeline).  A frame is forwarded here only when nothing about it
 * could make the pipeline do anything but forward it as the tables say: the
 * MACs and the TTL changed, and, on a flow hopgate handed over, its addresses,
 * ports and checksums as the connection's Side rewrites them; anything else is
 * passed up (XDP_PASS) to the pipeline's AF_PACKET socket.  The tables are filled by hopgate (src/hopgate/xdp/tables.py
 * holds their one Python definition; a test checks the sizes agree).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/in.h>
#include <linux/udp.h>
#include <linux/tcp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_PORTS 64

struct port {
	__u32 ifindex;
	__u16 mtu;
	__u8 mac[6];
	__u32 copies; /* 1: it takes the peers' second-chance copies */
};

struct route_key {
	__u32 prefixlen;
	__u32 addr; /* network byte order */
};

/* A route's next hop: ``port`` and ``gateway`` when it has one; when it has
 * ``count`` > 1 (equal-cost multipath), ``group``'s entries in hops4/hops6,
 * picked by the flow's hash as the pipeline picks them. */
struct route {
	__u32 port;
	__u32 gateway; /* network byte order; 0: on the link */
	__u32 count;
	__u32 group;
};

struct route6 {
	__u32 port;
	__u8 gateway[16]; /* all zero: on the link */
	__u32 count;
	__u32 group;
};

struct hop {
	__u32 port;
	__u32 gateway;
};

struct hop6 {
	__u32 port;
	__u8 gateway[16];
};

#define MAX_HOPS 16	/* next hops of one route; more: the pipeline's */
#define MAX_GROUPS 1024 /* multipath routes per family */

struct neigh_key {
	__u32 port;
	__u32 addr; /* network byte order */
};

struct route6_key {
	__u32 prefixlen;
	__u8 addr[16];
};

struct neigh6_key {
	__u32 port;
	__u8 addr[16];
};

struct addr6 {
	__u8 a[16];
};

struct neigh {
	__u8 mac[6];
	__u16 pad;
	/* When a packet last went through this entry here (CLOCK_MONOTONIC ns,
	 * the pipeline's clock), to within USED_GRANULE: hopgate reads it back
	 * so that the pipeline re-probes a STALE neighbour in use, and does not
	 * forget it, as it would had it sent the packets itself. */
	__u64 used;
};

#define USED_GRANULE 100000000ULL /* ns: a stamp a tenth of a second old is rewritten */

/* What the router is, written once by hopgate: ``nat`` is 1 when it has NAT
 * or services (then a packet may be a connection's, or need one). */
struct settings {
	__u32 nat;
	__u32 liberal; /* [nat] tcp_be_liberal: segments outside the windows pass */
	/* Past this time (bpf_ktime_get_ns) the program forwards nothing: the
	 * daemon renews it while it runs, and leaves it [dataplane] handover
	 * seconds ahead when it stops, for the next one to take over (0: no end). */
	__u64 until;
	__u64 layout; /* the tables' layout, for the next daemon to check */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct settings);
} settings SEC(".maps");

/* By port index (pipeline/ports.py). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, struct port);
} ports SEC(".maps");

/* The port of an ifindex, plus one: 0 is "not one of hopgate's". */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} port_of SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, struct route);
} routes4 SEC(".maps");

/* The neighbours the pipeline knows a MAC for (any state but INCOMPLETE:
 * pipeline/neighbours.py sends through them all); hopgate installs, changes and
 * removes them as the pipeline does. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct neigh_key);
	__type(value, struct neigh);
} neigh4 SEC(".maps");

/* Addresses a packet to or from must go to the pipeline: hopgate's own,
 * NAT's and the load balancer's, the broadcasts of its subnets. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} special4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route6_key);
	__type(value, struct route6);
} routes6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct neigh6_key);
	__type(value, struct neigh);
} neigh6 SEC(".maps");

/* hopgate's own IPv6 addresses (and VIPs): to or from them, the pipeline's. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct addr6);
	__type(value, __u8);
} special6 SEC(".maps");

/* A multipath route's next hops: group * MAX_HOPS + i. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_GROUPS * MAX_HOPS);
	__type(key, __u32);
	__type(value, struct hop);
} hops4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_GROUPS * MAX_HOPS);
	__type(key, __u32);
	__type(value, struct hop6);
} hops6 SEC(".maps");

/* zlib's CRC-32 table (polynomial 0xEDB88320), filled by hopgate. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 256);
	__type(key, __u32);
	__type(value, __u32);
} crc_table SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, MAX_PORTS);
	__type(key, __u32);
	__type(value, __u32);
} tx SEC(".maps");

/* Per ingress port (NO_PORT: a frame from an interface that is not one of
 * hopgate's ports, as port_of says), C_COUNT counters each. */
enum { C_PASSED, C_FORWARDED, C_COPIES, C_COUNT };
#define NO_PORT MAX_PORTS
#define REPLAYING 0x10000 /* an ingress port's flag: hopgate_replay's run */
#define COPY 0x20000	  /* an ingress port's flag: a peer's second-chance copy */
#define ETH_P_SECOND_CHANCE 0x88B5 /* pipeline/relay.py's SECOND_CHANCE_ETHERTYPE */

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (MAX_PORTS + 1) * C_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int count(__u32 port, __u32 which, int verdict)
{
	__u32 slot = port * C_COUNT + which;
	__u64 *n = bpf_map_lookup_elem(&counters, &slot);

	if (n)
		*n += 1;
	return verdict;
}

static __always_inline int pass(__u32 in)
{
	return count(in, C_PASSED, XDP_PASS);
}

/* The IPv4 header (no options) sums to 0xFFFF. */
static __always_inline int header_ok(struct iphdr *ip)
{
	__u16 *w = (__u16 *)ip;
	__u32 sum = 0;

#pragma unroll
	for (int i = 0; i < 10; i++)
		sum += w[i];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	return sum == 0xFFFF;
}

static __always_inline int same_mac(const __u8 *a, const __u8 *b)
{
	return a[0] == b[0] && a[1] == b[1] && a[2] == b[2] && a[3] == b[3] && a[4] == b[4] &&
	       a[5] == b[5];
}

static __always_inline int martian(__u32 addr)
{
	__u8 top = bpf_ntohl(addr) >> 24;

	return top == 0 || top == 127 || top >= 224;
}

static __always_inline void stamp(struct neigh *nb)
{
	__u64 now = bpf_ktime_get_ns();

	if (now - nb->used > USED_GRANULE)
		nb->used = now;
}

static __always_inline __u32 crc32(const __u8 *key, const int len)
{
	__u32 crc = 0xFFFFFFFF;

#pragma unroll
	for (int i = 0; i < len; i++) {
		__u32 idx = (crc ^ key[i]) & 0xFF;
		__u32 *t = bpf_map_lookup_elem(&crc_table, &idx);

		crc = (t ? *t : 0) ^ (crc >> 8);
	}
	return ~crc;
}

/* pipeline/routes.py's flow_hash: the CRC-32 of the flow's two ends, each its
 * address (w bytes) and port as on the wire, the lower end first, then the
 * protocol.  ``sport``/``dport``: as on the wire. */
static __always_inline __u32 flow_hash(const __u8 *saddr, const __u8 *daddr, __u16 sport,
				       __u16 dport, __u8 proto, const int w)
{
	__u8 s[18], d[18], key[37];
	int swap = 0;

	__builtin_memcpy(s, saddr, w);
	__builtin_memcpy(s + w, &sport, 2);
	__builtin_memcpy(d, daddr, w);
	__builtin_memcpy(d + w, &dport, 2);
#pragma unroll
	for (int i = 0; i < w + 2; i++) {
		if (s[i] != d[i]) {
			swap = s[i] > d[i];
			break;
		}
	}
	if (swap) {
		__builtin_memcpy(key, d, w + 2);
		__builtin_memcpy(key + w + 2, s, w + 2);
	} else {
		__builtin_memcpy(key, s, w + 2);
		__builtin_memcpy(key + w + 2, d, w + 2);
	}
	key[2 * w + 4] = proto;
	return crc32(key, 2 * w + 5);
}

/* flow_hash for each family. */
static __always_inline __u32 flow_hash4(struct iphdr *ip, __u16 sport, __u16 dport)
{
	return flow_hash((__u8 *)&ip->saddr, (__u8 *)&ip->daddr, sport, dport, ip->protocol, 4);
}

static __always_inline __u32 flow_hash6(struct ipv6hdr *ip, __u16 sport, __u16 dport)
{
	return flow_hash(ip->saddr.in6_u.u6_addr8, ip->daddr.in6_u.u6_addr8, sport, dport,
			 ip->nexthdr, 16);
}

/* The ports the flow hash takes (as on the wire), as packet/flows.py reads
 * them: TCP's and UDP's; an echo's identifier for both; none for a protocol
 * without ports.  -1: what the fast path leaves to the pipeline (an ICMP
 * message but an echo, a header cut short). */
static __always_inline int hash_ports(__u8 *l4, void *end, __u32 len, __u8 proto, __u8 icmp,
				      __u8 echo, __u8 reply, __u16 *sport, __u16 *dport)
{
	if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
		if ((void *)(l4 + 4) > end || len < 4)
			return -1;
		__builtin_memcpy(sport, l4, 2);
		__builtin_memcpy(dport, l4 + 2, 2);
		return 0;
	}
	if (proto == icmp) {
		if ((void *)(l4 + 6) > end || len < 6 || (l4[0] != echo && l4[0] != reply))
			return -1;
		__builtin_memcpy(sport, l4 + 4, 2);
		__builtin_memcpy(dport, l4 + 4, 2);
		return 0;
	}
	*sport = *dport = 0;
	return 0;
}

/* One direction of a connection NAT translates (pipeline/conntrack.py's Side),
 * by the tuple its packets arrive with: UDP streams, and TCP connections while
 * they are established. */
struct flow_key {
	__u8 family; /* 4 or 6 */
	__u8 proto;
	__u16 pad;
	__u8 saddr[16]; /* IPv4: the first 4 bytes */
	__u8 daddr[16];
	__u8 ports[4]; /* source and destination, as on the wire */
};

#define NO_HINT 0xFFFFFFFF
#define NO_TRACKER 0xFFFFFFFF

struct flow {
	__u8 addrs[32];	  /* the new source and destination (IPv4: 4 + 4 bytes) */
	__u8 ports[4];	  /* the new source and destination port */
	__u16 ip_delta;	  /* what the IPv4 header checksum moves by (RFC 1624) */
	__u16 l4_delta;	  /* what the UDP or TCP checksum moves by */
	__u32 hint_port;  /* source in, source out: the port to leave by, or NO_HINT */
	__u8 hint_mac[6]; /* ... and the MAC to send to */
	__u8 dir;	  /* 0: the connection's original direction, 1: its replies */
	__u8 unacked;	  /* written here: the tracker's "data unacknowledged" */
	__u32 tcp;	  /* TCP: its connection's tracker in tcp_conns; else NO_TRACKER */
	__u32 id;	  /* hopgate's number for the flow, read back with what follows */
	__u32 pad;
	/* Read back by hopgate: the connection's deadline and counters. */
	__u64 used; /* ns, CLOCK_MONOTONIC */
	__u64 packets;
	__u64 bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 20);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct flow_key);
	__type(value, struct flow);
} flows SEC(".maps");

/* One side of a TCP connection as pipeline/tcptrack.py tracks it (Linux's
 * ip_ct_tcp_state): the same fields, in the same order. */
struct tcp_side {
	__u32 end;    /* the highest sequence number it sent */
	__u32 maxend; /* the highest the other side allows it */
	__u32 maxwin; /* the largest window it advertised */
	__u32 maxack; /* the highest ack it sent */
	__u32 scale;  /* its window scale */
	__u32 flags;  /* T_* below */
};

#define T_MAXACK_SET 1
#define T_DATA_UNACKNOWLEDGED 2
#define T_BE_LIBERAL 4 /* picked up in mid-stream, or restored from a checkpoint */
#define MAX_ACK_WINDOW 66000 /* Linux's MAXACKWINDOW floor */
#define SEG_ACK 3	     /* tcptrack's index of a plain ACK */

/* An established connection's tracker, shared by its two flows.  ``taken``:
 * the program passed one of its segments up, so the connection is the
 * pipeline's from that segment on; the program neither forwards nor learns
 * from another. */
struct tcp_conn {
	struct bpf_spin_lock lock;
	__u32 taken;
	struct tcp_side side[2]; /* by direction */
	__u32 last_index;	 /* the last segment it took: its index, direction, end */
	__u32 last_dir;
	__u32 last_end;
	__u32 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1 << 19);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct tcp_conn);
} tcp_conns SEC(".maps");

/* NAT's inside prefixes and DNAT's inside addresses: a packet from or to one
 * may belong to a connection the fast path does not hold: the pipeline's. */
struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route_key);
	__type(value, __u8);
} guard4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 4096);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct route6_key);
	__type(value, __u8);
} guard6 SEC(".maps");

/* RFC 1624 eqn. 3: a checksum ``hc`` (host order) moved by ``delta``
 * (pipeline/nat/translate.py's adjust, without its UDP rules). */
static __always_inline __u16 adjust(__u16 hc, __u16 delta)
{
	__u32 total = (~hc & 0xFFFF) + delta;

	total = (total & 0xFFFF) + (total >> 16);
	total = (total & 0xFFFF) + (total >> 16);
	return ~total & 0xFFFF;
}

/* The UDP checksum at ``at`` moved by ``delta``: zero means none and stays
 * zero; one that comes out zero is sent as 0xFFFF. */
static __always_inline void adjust_udp(__u16 *at, __u16 delta)
{
	__u16 hc = bpf_ntohs(*at);

	if (!hc)
		return;
	hc = adjust(hc, delta);
	*at = bpf_htons(hc ? hc : 0xFFFF);
}

/* Where a frame leaves: MACs rewritten, through the devmap. */
static __always_inline int send(struct ethhdr *eth, struct port *egress, const __u8 *mac, __u32 in,
				__u32 out_port)
{
	__builtin_memcpy(eth->h_dest, mac, 6);
	__builtin_memcpy(eth->h_source, egress->mac, 6);
	count(in, C_FORWARDED, 0);
	return bpf_redirect_map(&tx, out_port, XDP_PASS);
}

/* ipv4's and ipv6's verdict: a frame forwarded is XDP_REDIRECT with the port it
 * leaves by above the low byte (the caller's to take apart: the stack has no
 * room for another variable). */
static __always_inline int sent(int verdict, __u32 out_port)
{
	return verdict == XDP_REDIRECT ? (int)(XDP_REDIRECT | out_port << 8) : verdict;
}

static __always_inline int zero16(const __u8 *a)
{
	__u32 any = 0;

#pragma unroll
	for (int i = 0; i < 16; i++)
		any |= a[i];
	return !any;
}

/* The neighbour to send a packet to ``dst`` by (IPv4), its port in *out;
 * hashed, on a multipath route, on the packet as it arrived.  NULL: the
 * pipeline's. */
static __always_inline struct neigh *next_hop4(struct iphdr *ip, __u32 dst, void *end, __u32 len,
					       __u32 *out)
{
	struct route_key rk = { .prefixlen = 32, .addr = dst };
	struct route *rt = bpf_map_lookup_elem(&routes4, &rk);
	if (!rt)
		return NULL;
	__u32 port = rt->port, gateway = rt->gateway;
	if (rt->count > 1) {
		__u16 sport, dport;
		if (hash_ports((void *)(ip + 1), end, len, ip->protocol, IPPROTO_ICMP, 8, 0, &sport,
			       &dport))
			return NULL;
		__u32 h = flow_hash4(ip, sport, dport);
		__u32 at = rt->group * MAX_HOPS + h % rt->count;
		struct hop *hop = bpf_map_lookup_elem(&hops4, &at);
		if (!hop)
			return NULL;
		port = hop->port;
		gateway = hop->gateway;
	}
	*out = port;
	struct neigh_key nk = { .port = port, .addr = gateway ? gateway : dst };
	return bpf_map_lookup_elem(&neigh4, &nk);
}

static __always_inline struct neigh *next_hop6(struct ipv6hdr *ip, const __u8 *dst, void *end,
					       __u32 len, __u32 *out)
{
	struct route6_key rk = { .prefixlen = 128 };
	__builtin_memcpy(rk.addr, dst, 16);
	struct route6 *rt = bpf_map_lookup_elem(&routes6, &rk);
	if (!rt)
		return NULL;
	__u32 port = rt->port;
	__u8 *gateway = rt->gateway;
	if (rt->count > 1) {
		__u16 sport, dport;
		/* An extension header first: the pipeline's to walk. */
		if (ip->nexthdr != IPPROTO_TCP && ip->nexthdr != IPPROTO_UDP &&
		    ip->nexthdr != IPPROTO_ICMPV6)
			return NULL;
		if (hash_ports((void *)(ip + 1), end, len, ip->nexthdr, IPPROTO_ICMPV6, 128, 129,
			       &sport, &dport))
			return NULL;
		__u32 h = flow_hash6(ip, sport, dport);
		__u32 at = rt->group * MAX_HOPS + h % rt->count;
		struct hop6 *hop = bpf_map_lookup_elem(&hops6, &at);
		if (!hop)
			return NULL;
		port = hop->port;
		gateway = hop->gateway;
	}
	*out = port;
	struct neigh6_key nk = { .port = port };
	if (zero16(gateway))
		__builtin_memcpy(nk.addr, dst, 16);
	else
		__builtin_memcpy(nk.addr, gateway, 16);
	return bpf_map_lookup_elem(&neigh6, &nk);
}

/* Whether the router has NAT or services: without, no packet is a
 * connection's, and its tables are not looked at. */
static __always_inline int with_nat(void)
{
	__u32 zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&settings, &zero);

	return cfg && cfg->nat;
}

/* Whether the time the last hopgate gave the program to forward is over (a
 * function of its own: its stack is not the forwarding path's). */
static __noinline int expired(void)
{
	__u32 zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&settings, &zero);

	return !cfg || (cfg->until && bpf_ktime_get_ns() > cfg->until);
}

static __always_inline int router_liberal(void)
{
	__u32 zero = 0;
	struct settings *cfg = bpf_map_lookup_elem(&settings, &zero);

	return cfg && cfg->liberal;
}

/* The flow a UDP datagram or TCP segment arrives on, if hopgate gave it to the
 * fast path (the ports are the first four bytes of both headers).  ``len``: the
 * transport header and data, which must hold the whole header (anything
 * shorter is the pipeline's). */
static __always_inline struct flow *l4_flow(__u8 family, __u8 proto, const void *saddr,
					    const void *daddr, const int w, __u8 *l4, void *end,
					    __u32 len)
{
	struct flow_key fk = { .family = family, .proto = proto };

	if (proto != IPPROTO_UDP && proto != IPPROTO_TCP)
		return NULL;
	if ((void *)(l4 + 4) > end || len < (proto == IPPROTO_TCP ? 20 : 8))
		return NULL;
	__builtin_memcpy(fk.saddr, saddr, w);
	__builtin_memcpy(fk.daddr, daddr, w);
	__builtin_memcpy(fk.ports, l4, 4);
	return bpf_map_lookup_elem(&flows, &fk);
}

/* a < 0 as sequence numbers compare (tcptrack's _before(a, 0)). */
static __always_inline int neg(__u32 a)
{
	return (__s32)a < 0;
}

/* tcptrack's in_window for a plain ACK on an established connection whose
 * sides have both been heard from, under the tracker's lock: 1 if it lies in
 * both windows (and the tracker has learned from it); if not, 1 all the same
 * when the connection is tracked liberally (``liberal`` has LIBERAL: the
 * router's tcp_be_liberal; or either side's flag), learning nothing, as
 * tcptrack; or, with OLD_OK (a replay: see tcp_segment), when it is only too
 * old; else 0 (the pipeline decides).  ``s``: the sending side, ``r``: the
 * other. */
#define LIBERAL 1
#define OLD_OK 2
static __always_inline int in_window(struct tcp_side *s, struct tcp_side *r, __u32 seq, __u32 ack,
				     __u32 end, __u32 win, int liberal)
{
	int old_ok = liberal & OLD_OK;
	__u32 s_end = s->end, s_maxend = s->maxend, s_maxwin = s->maxwin, s_maxack = s->maxack;
	__u32 s_flags = s->flags, r_end = r->end, r_maxend = r->maxend, r_maxwin = r->maxwin;
	__u32 r_flags = r->flags;
	__u32 max_ack_window = s_maxwin > MAX_ACK_WINDOW ? s_maxwin : MAX_ACK_WINDOW;

	if (!s_maxwin || !r_maxwin || s->scale > 14)
		return 0;
	liberal = liberal & LIBERAL || (s_flags | r_flags) & T_BE_LIBERAL;
	if (!(neg(seq - s_maxend - 1) && /* I: not beyond what the receiver allows */
	      neg(ack - r_end - 1)))	 /* III: acks nothing unsent */
		return liberal;
	if (!(neg(s_end - r_maxwin - 1 - end) &&	 /* II: not too old */
	      neg(r_end - max_ack_window - 1 - ack))) /* IV: not too old an ack */
		return liberal || old_ok;
	win <<= s->scale;
	if (s_maxwin < win)
		s->maxwin = win;
	if (neg(s_end - end)) {
		s->end = end;
		s_flags |= T_DATA_UNACKNOWLEDGED;
	}
	if (!(s_flags & T_MAXACK_SET)) {
		s->maxack = ack;
		s_flags |= T_MAXACK_SET;
	} else if (neg(s_maxack - ack)) {
		s->maxack = ack;
	}
	s->flags = s_flags;
	if (neg(s_maxend - end)) {
		__u64 grown = (__u64)r_maxwin + (__u32)(end - s_maxend);

		r->maxwin = grown > 0xFFFFFFFF ? 0xFFFFFFFF : grown;
	}
	if (!neg(ack + win - r_maxend))
		r->maxend = ack + win + (win == 0);
	if (ack == r_end && r_flags & T_DATA_UNACKNOWLEDGED)
		r->flags = r_flags & ~T_DATA_UNACKNOWLEDGED;
	return 1;
}

/* A segment on a TCP flow: 1 if it goes through here (a plain ACK within the
 * windows; the tracker has learned from it, as the pipeline's would have), 0
 * if it goes up, and with it the connection.  ``len``: its TCP header and
 * data.  ``replay`` (hopgate_replay): a plain ACK from before the handover,
 * judged only now, after later segments went by.  One only too old now (its
 * data or its ack more than a window behind: checks II and IV) may have been
 * in window as it came: it goes through, learning nothing, as with
 * tcp_be_liberal.  One beyond the windows or acking data not sent (I, III)
 * was so as it came too (those edges only move on): it goes up. */
static __always_inline int tcp_segment(struct flow *fl, struct tcphdr *tcp, void *end, __u32 len,
				       int replay)
{
	struct tcp_conn *tc = bpf_map_lookup_elem(&tcp_conns, &fl->tcp);
	if (!tc)
		return 0;
	int plain = 0;
	__u32 seq = 0, ack = 0, win = 0, seg_end = 0;
	if ((void *)(tcp + 1) <= end) {
		__u8 flags = ((__u8 *)tcp)[13];
		__u32 doff = tcp->doff * 4;

		plain = (flags & 0x17) == 0x10 && doff >= sizeof(*tcp) && doff <= len;
		seq = bpf_ntohl(tcp->seq);
		ack = bpf_ntohl(tcp->ack_seq);
		win = bpf_ntohs(tcp->window);
		seg_end = seq + (len - doff);
	}
	int ok = 0, liberal = (router_liberal() ? LIBERAL : 0) | (replay ? OLD_OK : 0);
	__u32 unacked = 0;
	bpf_spin_lock(&tc->lock);
	if (!tc->taken && plain) {
		if (fl->dir)
			ok = in_window(&tc->side[1], &tc->side[0], seq, ack, seg_end, win, liberal);
		else
			ok = in_window(&tc->side[0], &tc->side[1], seq, ack, seg_end, win, liberal);
	}
	if (ok) {
		if (!replay) { /* the last segment: a replayed one came before it */
			tc->last_index = SEG_ACK;
			tc->last_dir = fl->dir;
			tc->last_end = seg_end;
		}
		unacked = (tc->side[0].flags | tc->side[1].flags) & T_DATA_UNACKNOWLEDGED;
	} else {
		tc->taken = 1;
	}
	bpf_spin_unlock(&tc->lock);
	if (ok)
		fl->unacked = !!unacked;
	return ok;
}

/* A packet on a flow: counted for hopgate to read back, its ports and UDP or
 * TCP checksum rewritten (its addresses are the caller's). */
static __always_inline void on_flow(struct flow *fl, __u8 *l4, __u8 proto, void *end, __u32 size)
{
	fl->used = bpf_ktime_get_ns();
	__sync_fetch_and_add(&fl->packets, 1);
	__sync_fetch_and_add(&fl->bytes, size);
	if (proto == IPPROTO_TCP) {
		struct tcphdr *tcp = (void *)l4;

		if ((void *)(tcp + 1) > end)
			return;
		__builtin_memcpy(tcp, fl->ports, 4);
		tcp->check = bpf_htons(adjust(bpf_ntohs(tcp->check), fl->l4_delta));
	} else {
		struct udphdr *udp = (void *)l4;

		if ((void *)(udp + 1) > end)
			return;
		__builtin_memcpy(udp, fl->ports, 4);
		adjust_udp(&udp->check, fl->l4_delta);
	}
}

static __attribute__((noinline)) int ipv4(struct ethhdr *eth, struct port *ingress, __u32 in,
					  void *end)
{
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end)
		return pass(in);
	/* What the pipeline would question: options, fragments, a bad header,
	 * a hop limit it answers, addresses it treats apart. */
	if (ip->ihl != 5 || ip->version != 4 || ip->frag_off & bpf_htons(0x3FFF))
		return pass(in);
	__u16 total = bpf_ntohs(ip->tot_len);
	if (total < sizeof(*ip) || (void *)ip + total > end || !header_ok(ip))
		return pass(in);
	/* A packet longer than its own link allows is the pipeline's to drop.
	 * Ethernet padding after it is cut before it leaves (cut_padding). */
	if (total > ingress->mtu)
		return pass(in);
	if (ip->ttl <= 1 || martian(ip->saddr) || martian(ip->daddr))
		return pass(in);

	__u8 *l4 = (void *)(ip + 1);
	__u32 len = total - sizeof(*ip), dst = ip->daddr, out_port;
	__u8 *mac;
	struct neigh *nb = NULL;
	int nat = with_nat();
	struct flow *fl = NULL;
	if (nat)
		fl = l4_flow(4, ip->protocol, &ip->saddr, &ip->daddr, 4, l4, end, len);
	if (fl) {
		/* NAT's connection: it leaves translated, as the pipeline's Side says. */
		__builtin_memcpy(&dst, fl->addrs + 4, 4);
	} else {
		if (in & COPY) /* of no connection held here: the pipeline's to drop */
			return pass(in);
		if (bpf_map_lookup_elem(&special4, &ip->saddr) ||
		    bpf_map_lookup_elem(&special4, &ip->daddr))
			return pass(in);
		struct route_key gs = { .prefixlen = 32, .addr = ip->saddr };
		struct route_key gd = { .prefixlen = 32, .addr = ip->daddr };
		if (nat && (bpf_map_lookup_elem(&guard4, &gs) || bpf_map_lookup_elem(&guard4, &gd)))
			return pass(in);
	}
	if (fl && fl->hint_port != NO_HINT) {
		out_port = fl->hint_port;
		mac = fl->hint_mac;
	} else {
		nb = next_hop4(ip, dst, end, len, &out_port);
		if (!nb)
			return pass(in);
		mac = nb->mac;
	}
	struct port *egress = bpf_map_lookup_elem(&ports, &out_port);
	if (!egress || total > egress->mtu)
		return pass(in);
	/* The last question: a TCP segment the tracker does not take goes up. */
	if (fl && fl->tcp != NO_TRACKER && !tcp_segment(fl, (void *)l4, end, len, in & REPLAYING))
		return pass(in);
	if (nb)
		stamp(nb);
	if (fl) {
		__builtin_memcpy(&ip->saddr, fl->addrs, 8);
		ip->check = bpf_htons(adjust(bpf_ntohs(ip->check), fl->ip_delta));
		on_flow(fl, l4, ip->protocol, end, total);
	}
	/* TTL - 1, the checksum updated as ipv4.decrement_ttl does (RFC 1624). */
	ip->ttl -= 1;
	ip->check = bpf_htons(adjust(bpf_ntohs(ip->check), 0xFEFF));
	return sent(send(eth, egress, mac, in, out_port), out_port);
}

/* Multicast, link-local, ::, ::1: addresses the pipeline treats apart. */
static __always_inline int special_v6(const __u8 *a)
{
	if (a[0] == 0xFF || (a[0] == 0xFE && (a[1] & 0xC0) == 0x80))
		return 1;
	__u32 high = 0;

#pragma unroll
	for (int i = 0; i < 15; i++)
		high |= a[i];
	return !high && a[15] <= 1;
}

static __always_inline int guarded6(const __u8 *a)
{
	struct route6_key k = { .prefixlen = 128 };

	__builtin_memcpy(k.addr, a, 16);
	return bpf_map_lookup_elem(&guard6, &k) != NULL;
}

static __attribute__((noinline)) int ipv6(struct ethhdr *eth, struct port *ingress, __u32 in,
					  void *end)
{
	struct ipv6hdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || ip->version != 6)
		return pass(in);
	__u16 plen = bpf_ntohs(ip->payload_len);
	__u32 total = sizeof(*ip) + plen;
	/* No jumbogram, within both links; a hop limit to spend (padding after the
	 * packet is cut before it leaves: cut_padding). */
	if (!plen || (void *)ip + total > end || total > ingress->mtu || ip->hop_limit <= 1)
		return pass(in);
	__u8 *saddr = ip->saddr.in6_u.u6_addr8, *daddr = ip->daddr.in6_u.u6_addr8;
	if (special_v6(saddr) || special_v6(daddr))
		return pass(in);

	__u8 *l4 = (void *)(ip + 1);
	__u8 *dst = daddr, *mac;
	__u32 out_port;
	struct neigh *nb = NULL;
	int nat = with_nat();
	struct flow *fl = NULL;
	if (nat)
		fl = l4_flow(6, ip->nexthdr, saddr, daddr, 16, l4, end, plen);
	if (fl) {
		dst = fl->addrs + 16;
	} else {
		if (in & COPY)
			return pass(in);
		if (bpf_map_lookup_elem(&special6, saddr) || bpf_map_lookup_elem(&special6, daddr))
			return pass(in);
		if (nat && (guarded6(saddr) || guarded6(daddr)))
			return pass(in);
	}
	if (fl && fl->hint_port != NO_HINT) {
		out_port = fl->hint_port;
		mac = fl->hint_mac;
	} else {
		nb = next_hop6(ip, dst, end, plen, &out_port);
		if (!nb)
			return pass(in);
		mac = nb->mac;
	}
	struct port *egress = bpf_map_lookup_elem(&ports, &out_port);
	if (!egress || total > egress->mtu)
		return pass(in);
	if (fl && fl->tcp != NO_TRACKER && !tcp_segment(fl, (void *)l4, end, plen, in & REPLAYING))
		return pass(in);
	if (nb)
		stamp(nb);
	if (fl) {
		__builtin_memcpy(saddr, fl->addrs, 32);
		on_flow(fl, l4, ip->nexthdr, end, total);
	}
	ip->hop_limit -= 1;
	return sent(send(eth, egress, mac, in, out_port), out_port);
}

/* A frame on its way out (bpf_redirect_map done; the redirect happens when the
 * program returns): Ethernet padding after its IP packet (a short frame filled
 * up to Ethernet's 60 bytes) is cut, as the pipeline cuts it from what it
 * forwards.  Cutting within the frame cannot fail; were it to, the frame,
 * rewritten already, is dropped rather than sent on padded. */
static __always_inline int cut_padding(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 total;

	if ((void *)(eth + 1) > end)
		return XDP_DROP;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		total = bpf_ntohs(ip->tot_len);
	} else {
		struct ipv6hdr *ip = (void *)(eth + 1);

		if ((void *)(ip + 1) > end)
			return XDP_DROP;
		total = sizeof(*ip) + bpf_ntohs(ip->payload_len);
	}
	int extra = (int)(end - data) - (int)(sizeof(*eth) + total);
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, -extra))
		return XDP_DROP;
	return XDP_REDIRECT;
}

/* A second-chance copy's IP EtherType, by its packet's version (0: neither). */
static __always_inline __u16 copy_proto(struct ethhdr *eth, void *end)
{
	__u8 *version = (void *)(eth + 1);

	if ((void *)(version + 1) > end)
		return 0;
	if (*version >> 4 == 4)
		return bpf_htons(ETH_P_IP);
	return *version >> 4 == 6 ? bpf_htons(ETH_P_IPV6) : 0;
}

/* A copy after ipv4 or ipv6 (still a copy: they do not touch its EtherType):
 * forwarded, it leaves with its IP EtherType back.  Counted here, where the
 * port is looked up again (theirs counted nothing, the slot being out of
 * range; the caller's stack has no room to keep it), unless replayed. */
static __attribute__((noinline)) int copied(struct xdp_md *ctx, int replay, int verdict)
{
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = (void *)(long)ctx->data;
	__u32 ifindex = ctx->ingress_ifindex;
	__u32 *known = bpf_map_lookup_elem(&port_of, &ifindex);
	__u32 in = known && *known && *known <= MAX_PORTS ? *known - 1 : NO_PORT;

	if ((verdict & 0xFF) != XDP_REDIRECT) {
		if (!replay && verdict == XDP_PASS)
			count(in, C_PASSED, 0);
		return verdict;
	}
	if ((void *)(eth + 1) > end)
		return XDP_DROP; /* cannot be: the frame was forwarded */
	__u16 proto = copy_proto(eth, end);
	if (!proto)
		return XDP_DROP;
	eth->h_proto = proto;
	if (!replay) {
		count(in, C_FORWARDED, 0);
		count(in, C_COPIES, 0);
	}
	return verdict;
}

/* The program's work on one frame: its verdict, and for a frame forwarded the
 * port it leaves by above the low byte (see ``sent``).  ``replay``: 0, or
 * REPLAYING for hopgate_replay's run, carried in ipv4's and ipv6's ingress
 * port (the stack has no room for another argument); its counters then
 * count nothing, the slot being out of range: hopgate counts a replay.
 *
 * A peer's second-chance copy (docs/behaviour.md, "A cluster behind ECMP:
 * second chance"), on a port that takes them, is the IP packet it carries,
 * forwarded only on a connection's flow: ipv4 and ipv6 get COPY with the
 * port, and pass up one of no flow (the pipeline's: a miss, or a connection
 * it holds).
 * Forwarded, it leaves with its IP EtherType back; it is counted here. */
static __always_inline int fastpath(struct xdp_md *ctx, int replay)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u32 ifindex = ctx->ingress_ifindex;

	__u32 *known = bpf_map_lookup_elem(&port_of, &ifindex);
	if (!known || !*known || *known > MAX_PORTS)
		return pass(NO_PORT);
	__u32 in = *known - 1;
	if (expired()) /* first: little lives across the call (the stack limit) */
		return pass(in); /* no hopgate has renewed it in time */
	if ((void *)(eth + 1) > end || eth->h_source[0] & 1 || eth->h_dest[0] & 1)
		return pass(in);
	struct port *ingress = bpf_map_lookup_elem(&ports, &in);
	if (!ingress || !same_mac(eth->h_dest, ingress->mac))
		return pass(in);
	__u16 proto = eth->h_proto;
	__u32 copy = 0;
	if (proto == bpf_htons(ETH_P_SECOND_CHANCE) && ingress->copies) {
		proto = copy_proto(eth, end);
		copy = COPY;
	}
	int verdict;
	if (proto == bpf_htons(ETH_P_IP))
		verdict = ipv4(eth, ingress, in | replay | copy, end);
	else if (proto == bpf_htons(ETH_P_IPV6))
		verdict = ipv6(eth, ingress, in | replay | copy, end);
	else
		return pass(in);
	/* Only ctx lives on past the call (the stack limit): the rest is read again. */
	eth = (void *)(long)ctx->data;
	end = (void *)(long)ctx->data_end;
	if ((void *)(eth + 1) <= end && eth->h_proto == bpf_htons(ETH_P_SECOND_CHANCE))
		verdict = copied(ctx, replay, verdict);
	if ((verdict & 0xFF) == XDP_REDIRECT) {
		int cut = cut_padding(ctx);

		return cut == XDP_REDIRECT ? verdict : cut;
	}
	return verdict;
}

SEC("xdp")
int hopgate_fastpath(struct xdp_md *ctx)
{
	return fastpath(ctx, 0) & 0xFF;
}

/* The replay (docs/fastpath.md, "Segments from before the handover"): a
 * segment of a TCP connection the program holds that reached the pipeline all
 * the same, because it was received before the connection was handed over, is
 * run through the program by hopgate (BPF_PROG_TEST_RUN), as if it arrived
 * now.  The program judges it against its own tracker, under its lock, as any
 * other (but see tcp_segment).  The frame is not sent from here: hopgate sends
 * what the program made of it out of the port left in ``replay_out``; if the
 * program passes it, the pipeline takes the connection back and handles it. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} replay_out SEC(".maps");

SEC("xdp")
int hopgate_replay(struct xdp_md *ctx)
{
	int verdict = fastpath(ctx, REPLAYING);
	__u32 zero = 0;
	__u32 *slot = bpf_map_lookup_elem(&replay_out, &zero);

	if (slot)
		*slot = (verdict & 0xFF) == XDP_REDIRECT ? (__u32)verdict >> 8 : NO_PORT;
	return verdict & 0xFF;
}

char LICENSE[] SEC("license") = "GPL";
