//! Encodes answer templates once per snapshot, with hickory-proto, off the hot path.

use std::net::IpAddr;

use hickory_proto::op::{Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::{HINFO, NAPTR, SRV};
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

/// The synthesized HINFO of RFC 8482 §4.2 (`"RFC8482" ""`): the minimal answer to ANY.
pub fn rfc8482_record(owner: &Name, ttl: u32) -> Record {
    Record::from_rdata(owner.clone(), ttl, RData::HINFO(HINFO::new("RFC8482".into(), String::new())))
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
