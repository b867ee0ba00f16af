//! Header parsing for `cgroup_skb` programs, whose packets start at the IP header. Addresses come
//! out as IPv6 or IPv4-mapped keys, ports in host byte order.

use aya_ebpf::programs::SkBuffContext;
use enforcer_common::{AddrKey, FAMILY_INET, FAMILY_INET6, PROTO_SCTP, PROTO_TCP, PROTO_UDP};

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// The fields of one packet that a decision needs.
pub struct Packet {
    pub family: u8,
    /// IP protocol number as found (not yet normalised to `PROTO_OTHER`).
    pub protocol: u8,
    pub src: AddrKey,
    pub dst: AddrKey,
    pub src_port: u16,
    pub dst_port: u16,
    /// A TCP SYN without ACK: the first packet of a connection.
    pub syn: bool,
    /// TCP sequence number (0 for other protocols): a SYN's is the attempt's initial sequence
    /// number, equal in its retransmissions.
    pub seq: u32,
}

/// `::ffff:a.b.c.d` for an IPv4 address given in network byte order.
#[inline(always)]
pub fn v4_mapped(octets: [u8; 4]) -> AddrKey {
    [
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, octets[0], octets[1], octets[2], octets[3],
    ]
}

/// Parses the IP and transport headers; `Err` for packets that are not IPv4/IPv6.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Result<Packet, i64> {
    let first: u8 = ctx.load(0)?;
    match first >> 4 {
        4 => parse_v4(ctx, first),
        6 => parse_v6(ctx),
        _ => Err(-1),
    }
}

#[inline(always)]
fn parse_v4(ctx: &SkBuffContext, first: u8) -> Result<Packet, i64> {
    let hdr: [u8; 20] = ctx.load(0)?;
    let header_len = usize::from(first & 0x0f) * 4;
    let fragment_offset = u16::from_be_bytes([hdr[6] & 0x1f, hdr[7]]);
    let mut pkt = Packet {
        family: FAMILY_INET,
        protocol: hdr[9],
        src: v4_mapped([hdr[12], hdr[13], hdr[14], hdr[15]]),
        dst: v4_mapped([hdr[16], hdr[17], hdr[18], hdr[19]]),
        src_port: 0,
        dst_port: 0,
        syn: false,
        seq: 0,
    };
    if fragment_offset == 0 {
        transport(ctx, header_len, &mut pkt)?;
    }
    Ok(pkt)
}

#[inline(always)]
fn parse_v6(ctx: &SkBuffContext) -> Result<Packet, i64> {
    let next: u8 = ctx.load(6)?;
    let src: [u8; 16] = ctx.load(8)?;
    let dst: [u8; 16] = ctx.load(24)?;
    let mut pkt = Packet {
        family: FAMILY_INET6,
        protocol: next,
        src,
        dst,
        src_port: 0,
        dst_port: 0,
        syn: false,
        seq: 0,
    };
    transport(ctx, 40, &mut pkt)?;
    Ok(pkt)
}

#[inline(always)]
fn transport(ctx: &SkBuffContext, offset: usize, pkt: &mut Packet) -> Result<(), i64> {
    match pkt.protocol {
        PROTO_TCP => {
            // Ports, sequence number, acknowledgment number, data offset, flags.
            let hdr: [u8; 14] = ctx.load(offset)?;
            pkt.src_port = u16::from_be_bytes([hdr[0], hdr[1]]);
            pkt.dst_port = u16::from_be_bytes([hdr[2], hdr[3]]);
            pkt.seq = u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]]);
            pkt.syn = hdr[13] & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN;
        }
        PROTO_UDP | PROTO_SCTP => {
            let ports: [u8; 4] = ctx.load(offset)?;
            pkt.src_port = u16::from_be_bytes([ports[0], ports[1]]);
            pkt.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
        }
        _ => {}
    }
    Ok(())
}
