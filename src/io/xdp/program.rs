//! The XDP program, assembled here from eBPF instructions: its whole source is this file, built
//! at start-up for the addresses and ports dnlb serves, with no compiler, object file or
//! download involved.
//!
//! ```text
//!  frame ─ longer than a UMEM frame takes ─────────────────────────────────► XDP_PASS
//!        ─ Ethernet [+ one 802.1Q tag] ─┬─ IPv4: IHL 5, not a fragment, UDP ─┐
//!                                       ├─ IPv6: next header UDP ────────────┤
//!                                       └─ anything else (ARP, …) ─► PASS   │
//!        destination (address, port) one of those served? ──── no ──► XDP_PASS
//!                                                          └── yes ─► bpf_redirect_map(xsks,
//!                                              rx_queue_index, XDP_PASS): the queue's XSK, or
//!                                              the kernel when that queue has none
//! ```
//!
//! Everything the program passes meets dnlb's own sockets on the kernel's path (TCP, fragments,
//! IPv4 options, IPv6 extension headers, other ports), or whatever else the host runs. Fields
//! are compared in network byte order as loaded (little-endian loads of big-endian bytes), so
//! the constants below are the wire bytes read the same way.

use std::net::{Ipv4Addr, Ipv6Addr};

/// The XDP action that hands a frame to the kernel's stack.
pub const XDP_PASS: i32 = 2;
/// The XDP action of a redirect.
pub const XDP_REDIRECT: i32 = 4;
/// The helper `bpf_redirect_map`.
const HELPER_REDIRECT_MAP: i32 = 51;
/// `src_reg` of a 64-bit immediate load that names a map by its descriptor.
const PSEUDO_MAP_FD: u8 = 1;
/// The most (address, port) pairs one program compares: a bound on its size and run time.
pub const MAX_TARGETS: usize = 64;

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Insn {
    /// Opcode: class, size or operation, source.
    pub code: u8,
    /// Destination register (low nibble) and source register (high nibble).
    pub regs: u8,
    /// Jump or memory offset.
    pub off: i16,
    /// Immediate.
    pub imm: i32,
}

impl Insn {
    /// The instruction as the kernel reads it (little-endian fields, x86-64 and arm64 alike).
    pub fn to_bytes(self) -> [u8; 8] {
        let off = self.off.to_le_bytes();
        let imm = self.imm.to_le_bytes();
        [self.code, self.regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3]]
    }
}

/// What the program does with a frame it matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Redirect it to the XSK in this XSKMAP (a descriptor) at the frame's RX queue.
    Redirect(i32),
    /// Return `XDP_REDIRECT` without redirecting: for running the filter in the kernel's test
    /// harness (`BPF_PROG_TEST_RUN`), where a redirect into an empty map would read as a pass.
    Report,
}

/// The frames the program takes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    /// IPv4 destinations (address, port).
    pub v4: Vec<(Ipv4Addr, u16)>,
    /// IPv6 destinations (address, port).
    pub v6: Vec<(Ipv6Addr, u16)>,
    /// The longest frame a UMEM frame takes; longer ones go to the kernel.
    pub max_frame: u16,
}

// Registers.
const R0: u8 = 0;
const R1: u8 = 1;
const R2: u8 = 2;
const R3: u8 = 3;
const R4: u8 = 4;
const R5: u8 = 5;
const R6: u8 = 6;
const R7: u8 = 7;
const R8: u8 = 8;
const R9: u8 = 9;

// Opcodes: class | operation | source.
const LDX_W: u8 = 0x61;
const LDX_H: u8 = 0x69;
const LDX_B: u8 = 0x71;
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_K: u8 = 0x07;
const AND64_K: u8 = 0x57;
const JA: u8 = 0x05;
const JEQ_K: u8 = 0x15;
const JNE_K: u8 = 0x55;
const JGT_X: u8 = 0x2d;
const JNE32_K: u8 = 0x56;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
const LD_IMM64: u8 = 0x18;

/// A 16-bit field's wire bytes as a little-endian load reads them.
fn wire16(v: u16) -> i32 {
    i32::from(u16::from_le_bytes(v.to_be_bytes()))
}

/// Four wire bytes as a little-endian 32-bit load reads them.
fn wire32(b: [u8; 4]) -> i32 {
    i32::from_le_bytes(b)
}

/// A jump target, resolved when the program is finished.
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// Instructions with forward jumps to labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn op(&mut self, code: u8, dst: u8, src: u8, off: i16, imm: i32) {
        self.insns.push(Insn { code, regs: dst | (src << 4), off, imm });
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn jump(&mut self, code: u8, dst: u8, src: u8, imm: i32, to: Label) {
        self.fixups.push((self.insns.len(), to));
        self.op(code, dst, src, 0, imm);
    }

    /// `dst = *(size *)(src + off)`.
    fn load(&mut self, code: u8, dst: u8, src: u8, off: i16) {
        self.op(code, dst, src, off, 0);
    }

    /// `if (src + need > data_end) goto pass`, with `src` a packet pointer: the bounds check the
    /// verifier needs before every read below `need`.
    fn need(&mut self, src: u8, need: i32, pass: Label) {
        self.op(MOV64_X, R4, src, 0, 0);
        self.op(ADD64_K, R4, 0, 0, need);
        self.jump(JGT_X, R4, R3, 0, pass);
    }

    fn finish(mut self) -> Vec<Insn> {
        for (at, label) in std::mem::take(&mut self.fixups) {
            // Every label is bound before `finish` (the program below binds each it makes).
            let target = self.labels[label.0].unwrap_or(at + 1);
            self.insns[at].off = (target as i64 - at as i64 - 1) as i16;
        }
        self.insns
    }
}

/// Assembles the program for `filter`. Offsets are from the Ethernet header; with a VLAN tag the
/// data pointer moves 4 bytes on, so the same offsets serve both.
pub fn assemble(filter: &Filter, action: Action) -> Vec<Insn> {
    let mut a = Asm::default();
    let pass = a.label();
    let untagged = a.label();
    let ipv4 = a.label();
    let ipv6 = a.label();
    let redirect = a.label();
    a.op(MOV64_X, R6, R1, 0, 0); // ctx, for rx_queue_index
    a.load(LDX_W, R2, R1, 0); // data
    a.load(LDX_W, R3, R1, 4); // data_end
                              // A frame longer than a UMEM frame takes would be dropped by the socket: the kernel's.
    a.op(MOV64_X, R4, R2, 0, 0);
    a.op(ADD64_K, R4, 0, 0, i32::from(filter.max_frame));
    a.jump(JGT_X, R3, R4, 0, pass);
    a.need(R2, 14, pass);
    a.load(LDX_H, R5, R2, 12);
    a.jump(JNE_K, R5, 0, wire16(0x8100), untagged);
    a.op(ADD64_K, R2, 0, 0, 4);
    a.need(R2, 14, pass);
    a.load(LDX_H, R5, R2, 12);
    a.bind(untagged);
    if !filter.v4.is_empty() {
        a.jump(JEQ_K, R5, 0, wire16(0x0800), ipv4);
    }
    if !filter.v6.is_empty() {
        a.jump(JEQ_K, R5, 0, wire16(0x86dd), ipv6);
    }
    a.jump(JA, 0, 0, 0, pass);

    a.bind(ipv4);
    if !filter.v4.is_empty() {
        a.need(R2, 14 + 20 + 8, pass);
        a.load(LDX_B, R5, R2, 14);
        a.jump(JNE_K, R5, 0, 0x45, pass); // version 4, no options
        a.load(LDX_H, R5, R2, 14 + 6);
        a.op(AND64_K, R5, 0, 0, wire16(0x3fff));
        a.jump(JNE_K, R5, 0, 0, pass); // a fragment: more fragments or an offset
        a.load(LDX_B, R5, R2, 14 + 9);
        a.jump(JNE_K, R5, 0, 17, pass); // UDP
        a.load(LDX_W, R4, R2, 14 + 16); // destination address
        a.load(LDX_H, R5, R2, 14 + 20 + 2); // destination port
        for &(addr, port) in &filter.v4 {
            let next = a.label();
            a.jump(JNE32_K, R4, 0, wire32(addr.octets()), next);
            a.jump(JEQ_K, R5, 0, wire16(port), redirect);
            a.bind(next);
        }
        a.jump(JA, 0, 0, 0, pass);
    }

    a.bind(ipv6);
    if !filter.v6.is_empty() {
        a.need(R2, 14 + 40 + 8, pass);
        a.load(LDX_B, R5, R2, 14 + 6);
        a.jump(JNE_K, R5, 0, 17, pass); // UDP right after the header: no extension, no fragment
        a.load(LDX_H, R5, R2, 14 + 40 + 2); // destination port
                                            // The destination address in four words.
        a.load(LDX_W, R7, R2, 14 + 24);
        a.load(LDX_W, R8, R2, 14 + 28);
        a.load(LDX_W, R9, R2, 14 + 32);
        a.load(LDX_W, R4, R2, 14 + 36);
        for &(addr, port) in &filter.v6 {
            let next = a.label();
            let o = addr.octets();
            for (reg, at) in [(R7, 0), (R8, 4), (R9, 8), (R4, 12)] {
                a.jump(JNE32_K, reg, 0, wire32([o[at], o[at + 1], o[at + 2], o[at + 3]]), next);
            }
            a.jump(JEQ_K, R5, 0, wire16(port), redirect);
            a.bind(next);
        }
        a.jump(JA, 0, 0, 0, pass);
    }

    a.bind(redirect);
    match action {
        Action::Redirect(map_fd) => {
            a.op(LD_IMM64, R1, PSEUDO_MAP_FD, 0, map_fd);
            a.op(0, 0, 0, 0, 0);
            a.load(LDX_W, R2, R6, 16); // rx_queue_index
                                       // The low bits of the flags are the action when the queue has no socket.
            a.op(MOV64_K, R3, 0, 0, XDP_PASS);
            a.op(CALL, 0, 0, 0, HELPER_REDIRECT_MAP);
            a.op(EXIT, 0, 0, 0, 0);
        }
        Action::Report => {
            a.op(MOV64_K, R0, 0, 0, XDP_REDIRECT);
            a.op(EXIT, 0, 0, 0, 0);
        }
    }
    a.bind(pass);
    a.op(MOV64_K, R0, 0, 0, XDP_PASS);
    a.op(EXIT, 0, 0, 0, 0);
    a.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> Filter {
        Filter {
            v4: vec![("198.18.0.1".parse().unwrap(), 53)],
            v6: vec![("fd00:19::1".parse().unwrap(), 53)],
            max_frame: 1792,
        }
    }

    #[test]
    fn every_jump_lands_inside_the_program_and_it_ends_in_exit() {
        let insns = assemble(&filter(), Action::Redirect(7));
        let len = insns.len() as i64;
        for (i, insn) in insns.iter().enumerate() {
            let class = insn.code & 0x07;
            let op = insn.code & 0xf0;
            if (class == 0x05 || class == 0x06) && op != 0x80 && op != 0x90 {
                let target = i as i64 + 1 + i64::from(insn.off);
                assert!((0..len).contains(&target), "jump at {i} to {target}");
            }
        }
        assert_eq!(insns.last().unwrap().code, EXIT);
        // The map load names the descriptor in its first half.
        let ld = insns.iter().position(|i| i.code == LD_IMM64).unwrap();
        assert_eq!(insns[ld].imm, 7);
        assert_eq!(insns[ld].regs >> 4, PSEUDO_MAP_FD);
    }

    #[test]
    fn constants_are_the_wire_bytes_as_loaded() {
        assert_eq!(wire16(0x0800), 0x0008);
        assert_eq!(wire16(53), 0x3500);
        assert_eq!(wire32([198, 18, 0, 1]), i32::from_le_bytes([198, 18, 0, 1]));
        let bytes = Insn { code: 0x55, regs: 0x15, off: -2, imm: 0x0102_0304 }.to_bytes();
        assert_eq!(bytes, [0x55, 0x15, 0xfe, 0xff, 4, 3, 2, 1]);
    }

    #[test]
    fn a_family_with_nothing_served_is_not_compared_at_all() {
        let only_v4 = Filter { v6: Vec::new(), ..filter() };
        let both = assemble(&filter(), Action::Report).len();
        let v4 = assemble(&only_v4, Action::Report).len();
        assert!(v4 < both);
    }
}
