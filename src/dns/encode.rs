//! Encodes answer templates once per snapshot, with hickory-proto, off the hot path.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{HINFO, NAPTR, SOA, SRV};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::answer::Template;
use super::query::{flag, HEADER_LEN};

/// Why a template could not be encoded: always a bug or an impossible configuration of ours.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// A configured name is not a valid DNS name (validation should have caught it).
    #[error("invalid name `{name}`: {source}")]
    Name {
        /// The name as configured.
        name: String,
        /// hickory-proto's reason.
        source: hickory_proto::ProtoError,
    },
    /// hickory-proto refused to encode the message.
    #[error("cannot encode the answer for `{name}`: {source}")]
    Encode {
        /// The owner name.
        name: String,
        /// hickory-proto's reason.
        source: hickory_proto::ProtoError,
    },
}

/// Parses a presentation-format name as a fully qualified [`Name`].
pub fn name(text: &str) -> Result<Name, EncodeError> {
    let fqdn = if text.ends_with('.') { text.to_string() } else { format!("{text}.") };
    Name::from_ascii(&fqdn).map_err(|source| EncodeError::Name { name: text.to_string(), source })
}

/// An A or AAAA record.
pub fn address_record(owner: &Name, ttl: u32, address: IpAddr) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::from(address))
}

/// Bytes of one A record whose owner is the question name: pointer, type, class, TTL, length, address.
pub const A_RECORD_LEN: usize = 16;
/// Bytes of one AAAA record whose owner is the question name.
pub const AAAA_RECORD_LEN: usize = 28;

/// Appends an A or AAAA record owned by the question name (a pointer to offset 12) to `out`: the
/// bytes hickory-proto writes for [`address_record`] in a reply, made without a message, so a
/// ring of ten thousand addresses is a memcpy-speed loop.
pub fn append_address_record(out: &mut Vec<u8>, ttl: u32, address: IpAddr) {
    let (rtype, rdata): (u16, &[u8]) = match &address {
        IpAddr::V4(a) => (super::rtype::A, &a.octets()[..]),
        IpAddr::V6(a) => (super::rtype::AAAA, &a.octets()[..]),
    };
    out.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
    out.extend_from_slice(&rtype.to_be_bytes());
    out.extend_from_slice(&super::CLASS_IN.to_be_bytes());
    out.extend_from_slice(&ttl.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(rdata);
}

/// One SRV record of a [`srv_template`]: its fields, its target in lower-case wire format and the
/// target's address for the glue record.
#[derive(Debug, Clone, Copy)]
pub struct SrvMember<'a> {
    /// SRV priority.
    pub priority: u16,
    /// SRV weight.
    pub weight: u16,
    /// SRV port.
    pub port: u16,
    /// The target name, lower-case wire format.
    pub target: &'a [u8],
    /// The target's address (glue).
    pub address: IpAddr,
    /// Whether this member brings a glue record (false for a repeat of an earlier host+address).
    pub glue: bool,
}

/// The offsets at which the labels of a wire name start, root label included.
fn label_starts(name: &[u8]) -> Vec<usize> {
    let mut starts = Vec::new();
    let mut at = 0;
    while let Some(&len) = name.get(at) {
        starts.push(at);
        if len == 0 {
            break;
        }
        at += 1 + usize::from(len);
    }
    starts
}

/// Appends `name` compressed against the question name (at offset 12): its labels up to the
/// longest suffix it shares with the question, then a pointer to that suffix.
fn append_name(out: &mut Vec<u8>, name: &[u8], question: &[u8], question_starts: &[usize]) {
    for &t in &label_starts(name) {
        let suffix = &name[t..];
        if suffix.len() <= 1 {
            break;
        }
        if let Some(&q) = question_starts.iter().find(|&&q| &question[q..] == suffix) {
            out.extend_from_slice(&name[..t]);
            out.extend_from_slice(&(0xc000 | (HEADER_LEN + q) as u16).to_be_bytes());
            return;
        }
    }
    out.extend_from_slice(name);
}

/// The SRV answer to `question` (lower-case wire format) for `members`, with a glue A/AAAA record
/// per member that brings one: the same reply [`template`] encodes, made without a message so a
/// farm of thousands re-encodes in milliseconds. Target names are compressed against the question;
/// a glue record's owner points at its target in the answer section.
pub fn srv_template(question: &[u8], ttl: u32, members: &[SrvMember<'_>]) -> Template {
    let question_starts = label_starts(question);
    let question_end = HEADER_LEN + question.len() + 4;
    let mut body: Vec<u8> = Vec::with_capacity(members.len() * 48);
    let mut targets: Vec<usize> = Vec::with_capacity(members.len());
    for m in members {
        body.extend_from_slice(&[0xc0, HEADER_LEN as u8]);
        body.extend_from_slice(&super::rtype::SRV.to_be_bytes());
        body.extend_from_slice(&super::CLASS_IN.to_be_bytes());
        body.extend_from_slice(&ttl.to_be_bytes());
        let length_at = body.len();
        body.extend_from_slice(&[0, 0]);
        body.extend_from_slice(&m.priority.to_be_bytes());
        body.extend_from_slice(&m.weight.to_be_bytes());
        body.extend_from_slice(&m.port.to_be_bytes());
        targets.push(question_end + body.len());
        append_name(&mut body, m.target, question, &question_starts);
        let rdlength = (body.len() - length_at - 2) as u16;
        body[length_at..length_at + 2].copy_from_slice(&rdlength.to_be_bytes());
    }
    let required_len = body.len();
    let mut glue = 0u16;
    for (m, &at) in members.iter().zip(&targets) {
        if !m.glue {
            continue;
        }
        // A pointer reaches 14 bits; past that the owner is written out.
        match u16::try_from(at).ok().filter(|&a| a < 0x4000) {
            Some(a) => body.extend_from_slice(&(0xc000 | a).to_be_bytes()),
            None => append_name(&mut body, m.target, question, &question_starts),
        }
        let mut record = Vec::with_capacity(AAAA_RECORD_LEN);
        append_address_record(&mut record, ttl, m.address);
        body.extend_from_slice(&record[2..]);
        glue += 1;
    }
    Template { flags: flag::AA, counts: [members.len() as u16, 0, glue], body: body.into(), required_len }
}

/// The synthesized HINFO of RFC 8482 §4.2 (`"RFC8482" ""`): the minimal answer to ANY.
pub fn rfc8482_record(owner: &Name, ttl: u32) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::HINFO(HINFO::new("RFC8482".into(), String::new())))
}

/// The fields of a zone's SOA record (RFC 1035 §3.3.13), names in lower-case wire format.
#[derive(Debug, Clone, Copy)]
pub struct Soa<'a> {
    /// The zone apex: the record's owner.
    pub apex: &'a [u8],
    /// MNAME: the zone's primary name server.
    pub mname: &'a [u8],
    /// RNAME: the zone's contact mailbox in domain form.
    pub rname: &'a [u8],
    /// SERIAL.
    pub serial: u32,
    /// REFRESH, seconds.
    pub refresh: u32,
    /// RETRY, seconds.
    pub retry: u32,
    /// EXPIRE, seconds.
    pub expire: u32,
    /// MINIMUM: how long a negative answer may be cached (RFC 2308 §4).
    pub minimum: u32,
}

/// The SOA RR written out with no compression, TTL = MINIMUM: position-independent, so one
/// encoding follows any question name (an NXDOMAIN serves every unknown name of a zone).
pub fn soa_bytes(soa: &Soa<'_>) -> Vec<u8> {
    let mut rdata = Vec::with_capacity(soa.mname.len() + soa.rname.len() + 20);
    rdata.extend_from_slice(soa.mname);
    rdata.extend_from_slice(soa.rname);
    for v in [soa.serial, soa.refresh, soa.retry, soa.expire, soa.minimum] {
        rdata.extend_from_slice(&v.to_be_bytes());
    }
    let mut out = Vec::with_capacity(soa.apex.len() + 10 + rdata.len());
    out.extend_from_slice(soa.apex);
    out.extend_from_slice(&super::rtype::SOA.to_be_bytes());
    out.extend_from_slice(&super::CLASS_IN.to_be_bytes());
    // RFC 2308 §3: a negative answer's SOA TTL is min(SOA TTL, MINIMUM); they are the same here.
    out.extend_from_slice(&soa.minimum.to_be_bytes());
    out.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    out.extend_from_slice(&rdata);
    out
}

/// A negative answer (RFC 2308): NXDOMAIN or NODATA (`rcode` 0), authoritative, no answer, the
/// zone's SOA in the authority section. The SOA is required: a reply it does not fit is TC=1.
pub fn negative_template(rcode: u8, soa: &Soa<'_>) -> Template {
    let body = soa_bytes(soa);
    Template { flags: flag::AA | u16::from(rcode), counts: [0, 1, 0], required_len: body.len(), body: body.into() }
}

/// The SOA record of a zone as an answer (the apex's SOA question), MINIMUM as its TTL.
pub fn soa_record(soa: &Soa<'_>) -> Result<Record, EncodeError> {
    let parse = |wire: &[u8]| {
        let text = presentation(wire);
        name(&text)
    };
    let clamp = |v: u32| i32::try_from(v).unwrap_or(i32::MAX);
    let rdata = SOA::new(
        parse(soa.mname)?,
        parse(soa.rname)?,
        soa.serial,
        clamp(soa.refresh),
        clamp(soa.retry),
        clamp(soa.expire),
        soa.minimum,
    );
    Ok(Record::from_rdata(parse(soa.apex)?, soa.minimum, RData::SOA(rdata)))
}

/// An NS record.
pub fn ns_record(owner: &Name, ttl: u32, target: &Name) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::NS(hickory_proto::rr::rdata::NS(target.clone())))
}

/// A lower-case wire name in presentation format (`sip.example.test`), for names dnlb made.
pub fn presentation(wire: &[u8]) -> String {
    let mut out = String::with_capacity(wire.len());
    let mut at = 0;
    while let Some(&len) = wire.get(at) {
        if len == 0 {
            break;
        }
        let label = wire.get(at + 1..at + 1 + usize::from(len)).unwrap_or_default();
        if !out.is_empty() {
            out.push('.');
        }
        out.push_str(&String::from_utf8_lossy(label));
        at += 1 + usize::from(len);
    }
    out
}

/// A PTR record.
pub fn ptr_record(owner: &Name, ttl: u32, target: &Name) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::PTR(hickory_proto::rr::rdata::PTR(target.clone())))
}

/// An SRV record (RFC 2782).
pub fn srv_record(owner: &Name, ttl: u32, priority: u16, weight: u16, port: u16, target: &Name) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::SRV(SRV::new(priority, weight, port, target.clone())))
}

/// A NAPTR record with flag "s" pointing at an SRV name (RFC 3263 §4.1).
pub fn naptr_record(owner: &Name, ttl: u32, order: u16, service: &str, replacement: &Name) -> Record {
    let rdata =
        NAPTR::new(order, 50, b"s".to_vec().into(), service.as_bytes().into(), Box::new([]), replacement.clone());
    Record::from_rdata(owner.clone(), ttl, RData::NAPTR(rdata))
}

/// Encodes a NOERROR, authoritative reply to `(owner, qtype)` and keeps what follows the question.
pub fn template(
    owner: &Name,
    qtype: u16,
    answers: Vec<Record>,
    additionals: Vec<Record>,
) -> Result<Template, EncodeError> {
    let fail = |source| EncodeError::Encode { name: owner.to_string(), source };
    let answer_count = answers.len() as u16;
    let additional_count = additionals.len() as u16;
    let mut message = Message::new(0, MessageType::Response, OpCode::Query);
    message.add_query(Query::query(owner.to_lowercase(), RecordType::from(qtype)));
    message.add_answers(answers);
    message.add_additionals(additionals);
    let full = message.to_vec().map_err(fail)?;
    // The answer section alone, to find where the additional section starts.
    message.additionals.clear();
    let required = message.to_vec().map_err(fail)?;
    let question_end = HEADER_LEN + super::wire_name(&owner.to_ascii()).len() + 4;
    Ok(Template {
        flags: flag::AA,
        counts: [answer_count, 0, additional_count],
        body: full[question_end..].into(),
        required_len: required.len() - question_end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_encoded_srv_answers_read_as_hickory_encodes_them() {
        use hickory_proto::op::Message;
        let owner = name("_sip._udp.sip.example.test").unwrap();
        let question = super::super::wire_name("_sip._udp.sip.example.test");
        let hosts = ["ip-127-0-0-11.sip.example.test", "proxy.other.test", "ip-127-0-0-11.sip.example.test"];
        let wires: Vec<Vec<u8>> = hosts.iter().map(|h| super::super::wire_name(h)).collect();
        let addrs: [IpAddr; 3] =
            ["127.0.0.11".parse().unwrap(), "2001:db8::2".parse().unwrap(), "127.0.0.11".parse().unwrap()];
        let members: Vec<SrvMember<'_>> = (0..3)
            .map(|i| SrvMember {
                priority: 10,
                weight: 5 + i as u16,
                port: 5060 + i as u16,
                target: &wires[i],
                address: addrs[i],
                glue: i < 2,
            })
            .collect();
        let ours = srv_template(&question, 30, &members);
        let answers = members
            .iter()
            .zip(&hosts)
            .map(|(m, h)| srv_record(&owner, 30, m.priority, m.weight, m.port, &name(h).unwrap()))
            .collect();
        let glue = hosts[..2].iter().zip(&addrs).map(|(h, a)| address_record(&name(h).unwrap(), 30, *a)).collect();
        let theirs = template(&owner, super::super::rtype::SRV, answers, glue).unwrap();
        assert_eq!((ours.counts, ours.flags), (theirs.counts, theirs.flags));
        // Both, behind the same header and question, read back to the same records.
        let read = |t: &Template| {
            let mut m = vec![0, 1, 0x84, 0, 0, 1, 0, t.counts[0] as u8, 0, 0, 0, t.counts[2] as u8];
            m.extend_from_slice(&question);
            m.extend_from_slice(&[0, 33, 0, 1]);
            let required = m.len() + t.required_len;
            m.extend_from_slice(&t.body);
            let full = Message::from_vec(&m).unwrap();
            m.truncate(required);
            m[11] = 0;
            let answers_only = Message::from_vec(&m).unwrap();
            (full.answers, full.additionals, answers_only.answers.len())
        };
        assert_eq!(read(&ours), read(&theirs));
        assert!(ours.body.len() <= theirs.body.len() + 8, "compressed about as well");
    }

    #[test]
    fn hand_encoded_address_records_match_hickory() {
        let owner = name("sip.example.test").unwrap();
        for (qtype, address, len) in
            [(1, "192.0.2.7".parse().unwrap(), A_RECORD_LEN), (28, "2001:db8::7".parse().unwrap(), AAAA_RECORD_LEN)]
        {
            let t = template(&owner, qtype, vec![address_record(&owner, 60, address)], vec![]).unwrap();
            let mut out = Vec::new();
            append_address_record(&mut out, 60, address);
            assert_eq!(out.len(), len);
            assert_eq!(&out[..], &t.body[..]);
        }
    }
}
