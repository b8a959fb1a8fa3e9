//! The `.mesh` zone: names to VIPs, and the answer to one DNS query.
//!
//! [`Zone::answer`] turns a query packet into a response packet and never panics on input:
//! - `A` for `<service>.<domain>` (and the dotted variant of `a_b_c`: `a.b.c.<domain>`), `AAAA`
//!   as the IPv4-mapped IPv6 address, with the zone's TTL; the answer is authoritative;
//! - a name of the domain that does not exist: NXDOMAIN, with the zone's SOA;
//! - an existing name asked for another type: no data (NOERROR, SOA in authority);
//! - a name outside the domain given a record of its own (an external service's host, see
//!   [`Zone::with_records`]): `A`/`AAAA` like a name of the domain, no data for other types;
//! - any other name outside the domain, or a class other than IN: REFUSED;
//! - a packet that does not parse but has a header: FORMERR; opcodes other than QUERY:
//!   NOTIMP; responses and packets shorter than a header: dropped;
//! - EDNS(0) is answered with an OPT record; over UDP, a response larger than the client's
//!   limit (512 bytes, or its EDNS payload size) is truncated (TC set, no records).

use std::collections::HashMap;
use std::net::{Ipv4Addr, Ipv6Addr};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::{A, AAAA, SOA};
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};

use crate::vips::{HostnameKind, VipTable, addresses};

/// The largest UDP payload this server offers in EDNS (the DNS flag day 2020 value).
pub const EDNS_PAYLOAD: u16 = 1232;

/// The names of one DNS domain and their VIPs.
#[derive(Debug, Clone)]
pub struct Zone {
    /// Lowercase, without the trailing dot.
    domain: String,
    ttl: u32,
    /// Lowercase name relative to the domain -> addresses (sorted, deduplicated).
    names: HashMap<String, Vec<Ipv4Addr>>,
    /// Lowercase full names outside the domain with records of their own -> addresses.
    hosts: HashMap<String, Vec<Ipv4Addr>>,
    soa: Record,
}

/// Where a response travels: UDP responses are limited in size, TCP ones are not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Over UDP.
    Udp,
    /// Over TCP.
    Tcp,
}

impl Zone {
    /// An empty zone for `domain` (such as `mesh`) answering with `ttl` seconds.
    pub fn new(domain: &str, ttl: u32) -> Self {
        let domain = domain.trim_end_matches('.').to_ascii_lowercase();
        let apex = Name::from_ascii(format!("{domain}.")).unwrap_or_else(|_| Name::root());
        let ns = Name::from_ascii(format!("ns.{domain}.")).unwrap_or_else(|_| Name::root());
        let mbox =
            Name::from_ascii(format!("hostmaster.{domain}.")).unwrap_or_else(|_| Name::root());
        let soa = Record::from_rdata(
            apex,
            ttl,
            RData::SOA(SOA::new(ns, mbox, 1, 3600, 600, 86400, ttl)),
        );
        Zone {
            domain,
            ttl,
            names: HashMap::new(),
            hosts: HashMap::new(),
            soa,
        }
    }

    /// Adds the services of every table (one per mesh): `<service>.<domain>` and, for names
    /// with `_`, the dotted variant. A name in several meshes answers all their VIPs.
    pub fn with_tables<'a>(mut self, tables: impl IntoIterator<Item = &'a VipTable>) -> Self {
        for table in tables {
            for (hostname, ip) in addresses(table) {
                if hostname.kind != HostnameKind::Service {
                    continue;
                }
                let service = hostname.name.to_ascii_lowercase();
                for name in kuma_core::model::common::service_dns_names(&service) {
                    self.add(name, ip);
                }
            }
        }
        self.sorted()
    }

    /// Adds `(name, address)` records given by full name: `backend.mesh` in the domain, and
    /// names outside it (an external service's host, such as `httpbin.org`), which are then
    /// answered instead of refused.
    pub fn with_records(mut self, records: impl IntoIterator<Item = (String, Ipv4Addr)>) -> Self {
        for (name, ip) in records {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            if name.is_empty() || name == self.domain {
                continue;
            }
            match name
                .strip_suffix(self.domain.as_str())
                .and_then(|r| r.strip_suffix('.'))
            {
                Some(relative) => self.add(relative.to_string(), ip),
                None => self.hosts.entry(name).or_default().push(ip),
            }
        }
        self.sorted()
    }

    /// Each name's addresses in order, once each.
    fn sorted(mut self) -> Self {
        for ips in self.names.values_mut().chain(self.hosts.values_mut()) {
            ips.sort();
            ips.dedup();
        }
        self
    }

    fn add(&mut self, name: String, ip: Ipv4Addr) {
        self.names.entry(name).or_default().push(ip);
    }

    /// How many names the zone answers.
    pub fn len(&self) -> usize {
        self.names.len() + self.hosts.len()
    }

    /// True when the zone has no names.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty() && self.hosts.is_empty()
    }

    /// The addresses of `name` (relative to the domain, or a full name outside it with a
    /// record of its own; any case).
    pub fn lookup(&self, name: &str) -> Option<&[Ipv4Addr]> {
        let name = name.to_ascii_lowercase();
        self.names
            .get(&name)
            .or_else(|| self.hosts.get(&name))
            .map(Vec::as_slice)
    }

    /// The response to the query in `packet`, or `None` when nothing should be sent back.
    pub fn answer(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        self.answer_directly(packet)
            .or_else(|| self.answer_parsed(packet, transport))
    }

    /// The common case without building messages: one A or AAAA question (with at most an
    /// EDNS(0) OPT record) for a name of the zone, answered by copying the question and
    /// appending the records. Anything else (`None`) goes through [`Zone::answer_parsed`].
    fn answer_directly(&self, packet: &[u8]) -> Option<Vec<u8>> {
        let header = packet.get(..12)?;
        let count = |at: usize| u16::from_be_bytes([header[at], header[at + 1]]);
        // A standard query (QR 0, opcode 0) with one question and nothing else but an OPT.
        if header[2] & 0xf8 != 0 || count(4) != 1 || count(6) != 0 || count(8) != 0 {
            return None;
        }
        let additionals = count(10);
        // The question name, lowercased into `name` as dotted text.
        let mut name = [0u8; 256];
        let (mut at, mut len) = (12usize, 0usize);
        loop {
            let label = usize::from(*packet.get(at)?);
            at += 1;
            if label == 0 {
                break;
            }
            if label > 63 || len + label + 1 > name.len() {
                return None; // compression or oversize: not in a plain query
            }
            if len > 0 {
                name[len] = b'.';
                len += 1;
            }
            name[len..len + label].copy_from_slice(packet.get(at..at + label)?);
            len += label;
            at += label;
        }
        let question_end = at + 4;
        let question = packet.get(12..question_end)?;
        let qtype = u16::from_be_bytes([packet[at], packet[at + 1]]);
        let qclass = u16::from_be_bytes([packet[at + 2], packet[at + 3]]);
        if qclass != 1 || !(qtype == 1 || qtype == 28) {
            return None;
        }
        // Without EDNS a UDP answer must fit 512 bytes; with it, what the client takes (up to
        // what this server offers).
        let mut limit = 512;
        let edns = match additionals {
            0 if packet.len() == question_end => false,
            // An OPT for the root, version 0, with nothing after it.
            1 => {
                let opt = packet.get(question_end..question_end + 11)?;
                let rdlen = usize::from(u16::from_be_bytes([opt[9], opt[10]]));
                if opt[0] != 0 || opt[1..3] != [0, 41] || opt[6] != 0 {
                    return None;
                }
                if packet.len() != question_end + 11 + rdlen {
                    return None;
                }
                limit = u16::from_be_bytes([opt[3], opt[4]]).clamp(512, EDNS_PAYLOAD);
                true
            }
            _ => return None,
        };
        let name = &mut name[..len];
        name.make_ascii_lowercase();
        let name = std::str::from_utf8(name).ok()?;
        let ips = match name
            .strip_suffix(self.domain.as_str())
            .and_then(|r| r.strip_suffix('.'))
        {
            Some(relative) => self.names.get(relative)?,
            None => self.hosts.get(name)?,
        };
        let (rdlen, size) = if qtype == 1 { (4u16, 16) } else { (16u16, 28) };
        let total = 12 + question.len() + ips.len() * size + if edns { 11 } else { 0 };
        if total > usize::from(limit) {
            return None; // truncation, or TCP sizes: the general path
        }
        let mut out = Vec::with_capacity(total);
        out.extend_from_slice(&header[..2]);
        // QR, opcode 0, AA, RD as asked; RA 0, CD as asked, NOERROR.
        out.push(0x84 | (header[2] & 0x01));
        out.push(header[3] & 0x10);
        out.extend_from_slice(&[0, 1]);
        let answers = u16::try_from(ips.len()).ok()?;
        out.extend_from_slice(&answers.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, u8::from(edns)]);
        out.extend_from_slice(question);
        for ip in ips {
            // The name is a pointer to the question's (offset 12).
            out.extend_from_slice(&[0xc0, 0x0c]);
            out.extend_from_slice(&qtype.to_be_bytes());
            out.extend_from_slice(&[0, 1]);
            out.extend_from_slice(&self.ttl.to_be_bytes());
            out.extend_from_slice(&rdlen.to_be_bytes());
            if qtype == 1 {
                out.extend_from_slice(&ip.octets());
            } else {
                out.extend_from_slice(&ip.to_ipv6_mapped().octets());
            }
        }
        if edns {
            out.extend_from_slice(&[0, 0, 41]);
            out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        }
        Some(out)
    }

    /// Any query, through a parsed message (see the module docs).
    fn answer_parsed(&self, packet: &[u8], transport: Transport) -> Option<Vec<u8>> {
        if packet.len() < 12 || packet[2] & 0x80 != 0 {
            return None; // no header to answer, or a response (never answer those)
        }
        let request = match Message::from_vec(packet) {
            Ok(m) => m,
            Err(_) => {
                let id = u16::from_be_bytes([packet[0], packet[1]]);
                let op_code = OpCode::from_u8((packet[2] >> 3) & 0x0f);
                return Message::error_msg(id, op_code, ResponseCode::FormErr)
                    .to_vec()
                    .ok();
            }
        };
        if request.metadata.message_type != MessageType::Query {
            return None;
        }
        let mut response = Message::response(request.metadata.id, request.metadata.op_code);
        response.metadata.recursion_desired = request.metadata.recursion_desired;
        response.metadata.checking_disabled = request.metadata.checking_disabled;
        let limit = match (transport, &request.edns) {
            (Transport::Tcp, _) => usize::from(u16::MAX),
            (Transport::Udp, Some(edns)) => {
                usize::from(edns.max_payload().clamp(512, EDNS_PAYLOAD))
            }
            (Transport::Udp, None) => 512,
        };
        if request.edns.is_some() {
            let mut edns = Edns::new();
            edns.set_max_payload(EDNS_PAYLOAD);
            response.set_edns(edns);
        }
        if request.metadata.op_code != OpCode::Query {
            response.metadata.response_code = ResponseCode::NotImp;
            return response.to_vec().ok();
        }
        let [query] = request.queries.as_slice() else {
            response.metadata.response_code = ResponseCode::FormErr;
            return response.to_vec().ok();
        };
        response.add_query(query.clone());
        self.resolve(query, &mut response);
        let bytes = response.to_vec().ok()?;
        if bytes.len() <= limit {
            return Some(bytes);
        }
        response.answers.clear();
        response.authorities.clear();
        response.metadata.truncation = true;
        response.to_vec().ok()
    }

    /// Fills `response` with the answer to `query`.
    fn resolve(&self, query: &hickory_proto::op::Query, response: &mut Message) {
        let full = query.name().to_ascii().to_ascii_lowercase();
        let full = full.trim_end_matches('.');
        let relative = if full == self.domain {
            Some("")
        } else {
            full.strip_suffix(self.domain.as_str())
                .and_then(|r| r.strip_suffix('.'))
        };
        if query.query_class() != DNSClass::IN {
            response.metadata.response_code = ResponseCode::Refused;
            return;
        }
        let Some(relative) = relative else {
            // Outside the domain: only names with records of their own are answered.
            match self.hosts.get(full) {
                Some(ips) => {
                    response.metadata.authoritative = true;
                    response.add_answers(self.address_records(query, ips));
                }
                None => response.metadata.response_code = ResponseCode::Refused,
            }
            return;
        };
        response.metadata.authoritative = true;
        if relative.is_empty() {
            // The apex exists and has the SOA only.
            if query.query_type() == RecordType::SOA {
                response.add_answer(self.soa.clone());
            } else {
                response.authorities.push(self.soa.clone());
            }
            return;
        }
        let Some(ips) = self.names.get(relative) else {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.authorities.push(self.soa.clone());
            return;
        };
        let answers = self.address_records(query, ips);
        if answers.is_empty() {
            response.authorities.push(self.soa.clone());
        } else {
            response.add_answers(answers);
        }
    }
}

impl Zone {
    /// The A (or IPv4-mapped AAAA) records of `ips` for `query`'s name; none for other types.
    fn address_records(&self, query: &hickory_proto::op::Query, ips: &[Ipv4Addr]) -> Vec<Record> {
        let name = query.name().clone();
        match query.query_type() {
            RecordType::A => ips
                .iter()
                .map(|ip| Record::from_rdata(name.clone(), self.ttl, RData::A(A(*ip))))
                .collect(),
            RecordType::AAAA => ips
                .iter()
                .map(|ip| {
                    let mapped: Ipv6Addr = ip.to_ipv6_mapped();
                    Record::from_rdata(name.clone(), self.ttl, RData::AAAA(AAAA(mapped)))
                })
                .collect(),
            _ => Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use hickory_proto::op::Query;

    #[test]
    fn the_direct_answer_equals_the_parsed_one() {
        let table = crate::vips::service_table([("backend", "240.0.0.1"), ("a_b", "240.0.0.2")]);
        let zone = Zone::new("mesh", 60).with_tables([&table]);
        for (name, rtype, edns, rd) in [
            ("backend.mesh.", RecordType::A, false, true),
            ("BackEnd.MESH.", RecordType::AAAA, true, false),
            ("a.b.mesh.", RecordType::A, true, true),
            ("a_b.mesh.", RecordType::AAAA, false, false),
        ] {
            let mut q = Message::query();
            q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
            q.metadata.recursion_desired = rd;
            if edns {
                let mut e = Edns::new();
                e.set_max_payload(4096);
                q.set_edns(e);
            }
            let packet = q.to_vec().unwrap();
            let direct = zone.answer_directly(&packet).expect("the common case");
            let parsed = zone.answer_parsed(&packet, Transport::Udp).unwrap();
            let (d, p) = (
                Message::from_vec(&direct).unwrap(),
                Message::from_vec(&parsed).unwrap(),
            );
            assert_eq!(d.metadata, p.metadata, "{name}");
            assert_eq!(d.queries, p.queries, "{name}");
            assert_eq!(d.answers, p.answers, "{name}");
            assert_eq!(
                d.edns.map(|e| e.max_payload()),
                p.edns.map(|e| e.max_payload())
            );
        }
        // Not the common case: left to the general path.
        let mut q = Message::query();
        q.add_query(Query::query(
            Name::from_ascii("nope.mesh.").unwrap(),
            RecordType::A,
        ));
        assert!(zone.answer_directly(&q.to_vec().unwrap()).is_none());
    }

    #[test]
    fn hosts_outside_the_domain_are_answered_only_when_given() {
        let zone = Zone::new("mesh", 30).with_records([
            ("backend.mesh".to_string(), Ipv4Addr::new(240, 0, 0, 1)),
            ("HttpBin.org.".to_string(), Ipv4Addr::new(240, 0, 0, 2)),
        ]);
        assert_eq!(zone.len(), 2);
        assert_eq!(
            zone.lookup("httpbin.org"),
            Some(&[Ipv4Addr::new(240, 0, 0, 2)][..])
        );
        let ask = |name: &str, rtype: RecordType| {
            let mut q = Message::query();
            q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
            q.to_vec().unwrap()
        };
        let packet = ask("httpbin.org.", RecordType::A);
        let direct = Message::from_vec(&zone.answer_directly(&packet).unwrap()).unwrap();
        let parsed =
            Message::from_vec(&zone.answer_parsed(&packet, Transport::Udp).unwrap()).unwrap();
        assert_eq!(direct.metadata, parsed.metadata);
        assert_eq!(direct.answers, parsed.answers);
        assert_eq!(direct.answers.len(), 1);
        // Other names outside the domain are refused (a forwarding server sends them on).
        let other = zone
            .answer(&ask("example.org.", RecordType::A), Transport::Udp)
            .unwrap();
        assert_eq!(
            Message::from_vec(&other).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        // Another type for the host: no data, not refused.
        let mx = zone
            .answer(&ask("httpbin.org.", RecordType::MX), Transport::Udp)
            .unwrap();
        let mx = Message::from_vec(&mx).unwrap();
        assert_eq!(mx.metadata.response_code, ResponseCode::NoError);
        assert!(mx.answers.is_empty());
    }
}
