// SPDX-License-Identifier: GPL-2.0
/*
 * hopgate relay's socket filter (issue 11): the relay's admission in the kernel.
 *
 * Attached (SO_ATTACH_BPF) to each capture socket of ``hopgate relay``
 * (src/hopgate/io/capture.py), it returns 0 (not delivered) for every frame the
 * relay would not relay, so that the relay process wakes up only for the
 * messages it sends on.  What it checks is the classic filter's
 * (io/capture.py: PACKET_HOST; IPv4 ICMP 3/4, not a fragment; ICMPv6 2/0 right
 * after the IPv6 header) and then, in the same order, everything
 * pipeline/relay.py's Relay checks — that module is the specification, and a
 * test runs both on the same frames:
 *   - the IP header is sound (IPv4: version, lengths, checksum; IPv6: version,
 *     payload length), the ICMP header is within it;
 *   - the quoted packet is there (an IP header of the same family and 8 bytes);
 *   - not a relayed copy (a group destination MAC, or the DSCP mark);
 *   - the MTU is sane (68 / 1280 up to 65535), within [min_mtu, max_mtu];
 *   - the quoted packet's source port is one of ``ports`` (when given);
 *   - a token from the source's bucket, then one from the interface's.
 *
 * The buckets are pipeline/ratelimit.py's TokenBucket in integers: a rate in
 * thousandths of a message a second, tokens in 10^-12 of a message, so that
 * ``elapsed ns * rate`` is the refill, exactly.  One lock (socket filters may
 * not use bpf_spin_lock: a compare-and-swap on ``state.busy``) serialises the
 * buckets' updates, so that they see the messages one at a time, as Python's
 * do, whatever CPUs they arrive on.  Each frame's fate is counted per interface, by reason (the order of
 * ``enum outcome`` is src/hopgate/xdp/relayfilter.py's OUTCOMES).
 *
 * Every offset is from the frame's first byte: an AF_PACKET socket's filter
 * sees the frame from its Ethernet header, and bpf_skb_load_bytes reads past
 * the linear part of the buffer too.
 */
#include <linux/bpf.h>
#include <linux/if_packet.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MAX_IFACES 64
#define MAX_SOURCES 4096 /* RelaySettings.max_sources */
#define SNAPLEN 0x40000	 /* what an admitted frame is cut to: io/capture.py's */
#define ONE 1000000000000ULL /* one message in a bucket: 10^12 */
#define MAX_EXTENSION_HEADERS 16 /* packet/ipv6.py's */
/* Tries at the lock.  It is held for some tens of instructions, in the softirq
 * the filter runs in, which nothing preempts; should it not come (a held lock
 * can only be a test run's, BPF_PROG_TEST_RUN being preemptible) the buckets
 * are updated without it rather than never again. */
#define LOCK_TRIES 1000

#define ETH_LEN 14
#define IPPROTO_ICMP 1
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define IPPROTO_ICMPV6 58

enum outcome {
	PASSED,		 /* admitted: the relay gets it */
	NOT_PMTU,	 /* not for the relay at all: not counted as seen */
	RELAYED_COPY,	 /* RelayDrop's reasons from here on, in its order */
	NO_QUOTE,
	MTU_INSANE,
	MTU_OUT_OF_RANGE,
	PORT_FILTERED,
	RATE_SOURCE,
	RATE_INTERFACE,
	OUTCOMES,
};

struct config {
	__u64 src_rate;	    /* thousandths of a message a second */
	__u64 src_burst;    /* in 10^-12 of a message */
	__u64 src_full_ns;  /* time an empty source bucket takes to fill */
	__u64 iface_rate;
	__u64 iface_burst;
	__u64 iface_full_ns;
	__u32 min_mtu;	    /* 0: none */
	__u32 max_mtu;	    /* 0: none */
	__u32 mark;	    /* DSCP of relayed copies */
	__u32 ports;	    /* 1: only the ports in ``port_bits`` */
};

struct bucket {
	__u64 tokens; /* in 10^-12 of a message */
	__u64 last;   /* CLOCK_MONOTONIC ns of the last refill */
};

struct state {
	__u64 busy; /* the lock: 1 while a CPU updates a bucket */
	struct bucket iface[MAX_IFACES]; /* by the relay's interface index */
};

struct source {
	__u32 family; /* 4 or 6 */
	__u8 addr[16];	 /* an IPv4 address in the first 4 bytes */
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct state);
} state SEC(".maps");

/* The relay's index of each interface it captures on, by ifindex. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_IFACES);
	__type(key, __u32);
	__type(value, __u32);
} iface_index SEC(".maps");

/* Port p is allowed if bit p % 64 of word p / 64 is set. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536 / 64);
	__type(key, __u32);
	__type(value, __u64);
} port_bits SEC(".maps");

/* The sources' buckets, the least recently used forgotten first (as nearly as
 * the kernel's LRU map keeps that order): a forgotten source starts again
 * with a full bucket, as in pipeline/relay.py. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, MAX_SOURCES);
	__type(key, struct source);
	__type(value, struct bucket);
} sources SEC(".maps");

/* interface index * OUTCOMES + outcome; index MAX_IFACES: an unknown interface. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, (MAX_IFACES + 1) * OUTCOMES);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

static __always_inline int done(__u32 iface, enum outcome what)
{
	__u32 slot = iface * OUTCOMES + what;
	__u64 *n = bpf_map_lookup_elem(&counters, &slot);

	if (n)
		*n += 1;
	return what == PASSED ? SNAPLEN : 0;
}

/* TokenBucket.take: refill for the time since the last refill, then take a
 * whole message if there is one. */
static __always_inline int take(struct bucket *b, __u64 now, __u64 rate, __u64 burst,
				__u64 full_ns)
{
	if (now > b->last) {
		__u64 elapsed = now - b->last;

		if (elapsed >= full_ns) {
			b->tokens = burst;
		} else {
			/* elapsed < burst / rate: no overflow */
			__u64 t = b->tokens + elapsed * rate;

			b->tokens = t < burst ? t : burst;
		}
		b->last = now;
	}
	if (b->tokens < ONE)
		return 0;
	b->tokens -= ONE;
	return 1;
}

static __always_inline __u16 be16(const __u8 *p)
{
	return ((__u16)p[0] << 8) | p[1];
}

/* What pipeline/relay.py's read() and Relay._check find, up to the buckets. */
struct message {
	struct source src;
	__u32 mtu;
	__u32 dscp;
	int sport; /* -1: none (not TCP or UDP, a later fragment) */
};

/* packet/ipv6.py's walk over the quoted packet's extension headers, for its
 * source port: -1 if it has none (or the chain is malformed). */
static __always_inline int quoted_port6(struct __sk_buff *skb, __u32 pos, __u8 nh, __u32 end)
{
	__u32 frag_offset = 0;
	__u8 h[4];

	for (int count = 1; count <= MAX_EXTENSION_HEADERS + 1; count++) {
		__u32 len;

		if (nh != 0 && nh != 43 && nh != 44 && nh != 51 && nh != 60 && nh != 135)
			break;
		if (count > MAX_EXTENSION_HEADERS || pos + 8 > end)
			return -1;
		if (nh == 0 && count != 1)
			return -1; /* hop-by-hop only right after the IPv6 header */
		if (bpf_skb_load_bytes(skb, pos, h, 4))
			return -1;
		if (nh == 44) {
			frag_offset = be16(h + 2) & 0xFFF8;
			len = 8;
		} else if (nh == 51) {
			len = ((__u32)h[1] + 2) << 2;
		} else {
			len = ((__u32)h[1] + 1) << 3;
		}
		if (pos + len > end)
			return -1;
		nh = h[0];
		pos += len;
		if (frag_offset)
			break;
	}
	if ((nh != IPPROTO_TCP && nh != IPPROTO_UDP) || frag_offset || pos + 2 > end)
		return -1;
	if (bpf_skb_load_bytes(skb, pos, h, 2))
		return -1;
	return be16(h);
}

static __always_inline int read4(struct __sk_buff *skb, struct message *m, int want_port)
{
	/* ip: zeroed, as the verifier wants a buffer read into at a variable
	 * length to be, unless the loader may read uninitialised stack (CAP_PERFMON) */
	__u8 ip[60] = {}, icmp[8], in[20];
	__u32 len = skb->len;

	if (ETH_LEN + 20 > len || bpf_skb_load_bytes(skb, ETH_LEN, ip, 20))
		return NOT_PMTU;
	__u32 ihl = (ip[0] & 0xF) << 2;
	__u32 total = be16(ip + 2);

	/* packet/ipv4.py's check */
	if (ip[0] >> 4 != 4 || ihl < 20 || total < ihl || ETH_LEN + total > len)
		return NOT_PMTU;
	if (ihl > 20 && bpf_skb_load_bytes(skb, ETH_LEN + 20, ip + 20, ihl - 20))
		return NOT_PMTU;
	__u32 sum = 0;
#pragma unroll
	for (int i = 0; i < 30; i++)
		if (2 * i < ihl)
			sum += ((__u16)ip[2 * i] << 8) | ip[2 * i + 1];
	sum = (sum & 0xFFFF) + (sum >> 16);
	sum = (sum & 0xFFFF) + (sum >> 16);
	if (sum != 0xFFFF)
		return NOT_PMTU;

	__u32 end = ETH_LEN + total;
	__u32 at = ETH_LEN + ihl;

	/* ICMP, not a fragment (MF or an offset), type 3 code 4 */
	if (ip[9] != IPPROTO_ICMP || be16(ip + 6) & 0x3FFF || at + 8 > end)
		return NOT_PMTU;
	if (bpf_skb_load_bytes(skb, at, icmp, 8) || icmp[0] != 3 || icmp[1] != 4)
		return NOT_PMTU;
	m->mtu = be16(icmp + 6);
	m->dscp = ip[1] >> 2;
	m->src.family = 4;
	__builtin_memcpy(m->src.addr, ip + 12, 4);

	__u32 inner = at + 8;

	if (inner + 20 > end || bpf_skb_load_bytes(skb, inner, in, 20))
		return NO_QUOTE;
	__u32 iihl = (in[0] & 0xF) << 2;

	if (in[0] >> 4 != 4 || inner + iihl + 8 > end || iihl < 20)
		return NO_QUOTE;
	m->sport = -1;
	if (want_port && (in[9] == IPPROTO_TCP || in[9] == IPPROTO_UDP) &&
	    !(be16(in + 6) & 0x1FFF)) {
		if (bpf_skb_load_bytes(skb, inner + iihl, icmp, 2))
			return NO_QUOTE; /* cannot be: within ``end`` */
		m->sport = be16(icmp);
	}
	return PASSED;
}

static __always_inline int read6(struct __sk_buff *skb, struct message *m, int want_port)
{
	__u8 ip[40], icmp[8], in[40];
	__u32 len = skb->len;

	if (ETH_LEN + 40 > len || bpf_skb_load_bytes(skb, ETH_LEN, ip, 40))
		return NOT_PMTU;
	__u32 plen = be16(ip + 4);

	/* packet/ipv6.py's check; then ICMPv6 right after the header (the
	 * classic filter's condition: routers add no extension headers) */
	if (ip[0] >> 4 != 6 || (plen == 0 && ip[6] == 0) || ETH_LEN + 40 + plen > len)
		return NOT_PMTU;
	__u32 end = ETH_LEN + 40 + plen;
	__u32 at = ETH_LEN + 40;

	if (ip[6] != IPPROTO_ICMPV6 || at + 8 > end)
		return NOT_PMTU;
	if (bpf_skb_load_bytes(skb, at, icmp, 8) || icmp[0] != 2 || icmp[1] != 0)
		return NOT_PMTU;
	m->mtu = ((__u32)icmp[4] << 24) | ((__u32)icmp[5] << 16) | ((__u32)icmp[6] << 8) | icmp[7];
	m->dscp = ((ip[0] & 0x0F) << 2) | (ip[1] >> 6);
	m->src.family = 6;
	__builtin_memcpy(m->src.addr, ip + 8, 16);

	__u32 inner = at + 8;

	if (inner + 48 > end || bpf_skb_load_bytes(skb, inner, in, 40) || in[0] >> 4 != 6)
		return NO_QUOTE;
	m->sport = -1;
	if (!want_port)
		return PASSED;
	if (in[6] == IPPROTO_TCP || in[6] == IPPROTO_UDP) {
		if (bpf_skb_load_bytes(skb, inner + 40, icmp, 2))
			return NO_QUOTE; /* cannot be: within ``end`` */
		m->sport = be16(icmp);
	} else {
		m->sport = quoted_port6(skb, inner + 40, in[6], end);
	}
	return PASSED;
}

static __always_inline int port_allowed(int sport)
{
	if (sport < 0)
		return 0;
	__u32 word = (__u32)sport >> 6;
	__u64 *bits = bpf_map_lookup_elem(&port_bits, &word);

	return bits && (*bits >> (sport & 63)) & 1;
}

SEC("socket")
int hopgate_relay_filter(struct __sk_buff *skb)
{
	__u32 zero = 0, ifindex = skb->ifindex;
	__u32 *found = bpf_map_lookup_elem(&iface_index, &ifindex);
	__u32 iface = found && *found < MAX_IFACES ? *found : MAX_IFACES;
	struct config *cfg = bpf_map_lookup_elem(&config, &zero);
	struct state *st = bpf_map_lookup_elem(&state, &zero);
	struct message m = {};
	__u8 eth[ETH_LEN];
	int got;

	if (!cfg || !st || iface >= MAX_IFACES)
		return done(MAX_IFACES, NOT_PMTU);
	if (skb->pkt_type != PACKET_HOST || bpf_skb_load_bytes(skb, 0, eth, ETH_LEN))
		return done(iface, NOT_PMTU);
	__u16 ethertype = be16(eth + 12);

	if (ethertype == 0x0800)
		got = read4(skb, &m, cfg->ports);
	else if (ethertype == 0x86DD)
		got = read6(skb, &m, cfg->ports);
	else
		got = NOT_PMTU;
	if (got != PASSED)
		return done(iface, got);

	/* Relay._check */
	if (eth[0] & 1 || m.dscp == cfg->mark)
		return done(iface, RELAYED_COPY);
	if (m.mtu < (m.src.family == 4 ? 68 : 1280) || m.mtu > 65535)
		return done(iface, MTU_INSANE);
	if ((cfg->min_mtu && m.mtu < cfg->min_mtu) || (cfg->max_mtu && m.mtu > cfg->max_mtu))
		return done(iface, MTU_OUT_OF_RANGE);
	if (cfg->ports && !port_allowed(m.sport))
		return done(iface, PORT_FILTERED);

	/* Relay._admit: the source's bucket first, then the interface's. */
	__u64 now = bpf_ktime_get_ns();
	struct bucket *src = bpf_map_lookup_elem(&sources, &m.src);

	if (!src) {
		struct bucket fresh = { .tokens = cfg->src_burst, .last = now };

		bpf_map_update_elem(&sources, &m.src, &fresh, BPF_NOEXIST);
		src = bpf_map_lookup_elem(&sources, &m.src);
		if (!src)
			return done(iface, RATE_SOURCE); /* cannot be: an LRU map makes room */
	}
	int locked = 0;

	for (int i = 0; i < LOCK_TRIES; i++) {
		if (__sync_val_compare_and_swap(&st->busy, 0, 1) == 0) {
			locked = 1;
			break;
		}
	}
	if (!take(src, now, cfg->src_rate, cfg->src_burst, cfg->src_full_ns))
		got = RATE_SOURCE;
	else if (!take(&st->iface[iface], now, cfg->iface_rate, cfg->iface_burst,
		       cfg->iface_full_ns))
		got = RATE_INTERFACE;
	if (locked)
		__sync_lock_test_and_set(&st->busy, 0);
	return done(iface, got);
}

char LICENSE[] SEC("license") = "GPL";
