//! TLS for the prober's driver: one rustls client configuration per service, and the step that
//! moves one probe's [`ClientConnection`] over its non-blocking TCP stream.
//!
//! ```text
//!  mio event ─► step(): write_tls (flush) ─► read_tls (≤ 4 KiB) ─► process_new_packets
//!                      ─► write_tls (handshake replies) ─► reader(): plaintext into the buffer
//!               returns: secured now? · plaintext bytes · how the connection ended, if it did
//!  driver ─► core: Event::Secured · Event::Stream(plaintext) · Event::TlsFailed / Closed
//! ```
//!
//! The core never sees TLS: after the handshake it gets the decrypted bytes exactly as it gets a
//! TCP stream's, so its bounded framing applies unchanged. What a peer can make rustls hold is
//! bounded by rustls itself (a handshake message at most 64 KiB, at most 16 KiB of received
//! plaintext buffered before `read_tls` refuses more), and the driver drains the plaintext on
//! every step. What a peer can make rustls *do* is bounded here: a step reads at most
//! [`STEP_READ`] bytes, a certificate chain is at most [`MAX_CHAIN_CERTIFICATES`] and
//! [`MAX_CHAIN_BYTES`] (rustls copies it for every session ticket), and a connection may read
//! at most [`MAX_IDLE_BYTES`] after the handshake beyond the reply's plaintext. Session resumption is off: every probe verifies the certificate in full, as a
//! phone's first handshake would, so an expired or replaced certificate fails the next probe.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use super::core::TlsFailure;
use crate::config::{Config, TlsVerify, Transport};

/// One client configuration per service of `config` that has a TLS server (`None` for the
/// others). The system's roots are read once, here, and only if a service asks for them.
pub fn client_configs(config: &Config) -> io::Result<Vec<Option<Arc<ClientConfig>>>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut system: Option<Arc<RootCertStore>> = None;
    let mut out = Vec::with_capacity(config.services.len());
    for service in &config.services {
        if !service.servers.iter().any(|s| s.transports.contains(&Transport::Tls)) {
            out.push(None);
            continue;
        }
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(io::Error::other)?;
        let roots = match &service.tls_verify {
            TlsVerify::System => Some(system.get_or_insert_with(|| Arc::new(system_roots())).clone()),
            TlsVerify::CaFile { path, certificates } => {
                let mut roots = RootCertStore::empty();
                for der in certificates {
                    roots.add(CertificateDer::from(der.clone())).map_err(|e| {
                        io::Error::other(format!("{}: a CA certificate is not usable: {e}", path.display()))
                    })?;
                }
                Some(Arc::new(roots))
            }
            TlsVerify::Off => None,
        };
        let verifier: Arc<dyn ServerCertVerifier> = match roots {
            None => Arc::new(AnyCertificate(provider.clone())),
            Some(roots) => match WebPkiServerVerifier::builder_with_provider(roots.clone(), provider.clone()).build() {
                Ok(webpki) => webpki,
                // No root at all (no system CA installed): every certificate is refused as
                // untrusted, at the first check, so the chain's length does not matter.
                Err(_) => {
                    let mut client = builder.with_root_certificates(roots).with_no_client_auth();
                    client.resumption = Resumption::disabled();
                    out.push(Some(Arc::new(client)));
                    continue;
                }
            },
        };
        let mut client = builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(BoundedChain(verifier)))
            .with_no_client_auth();
        client.resumption = Resumption::disabled();
        out.push(Some(Arc::new(client)));
    }
    Ok(out)
}

/// The operating system's trust store (rustls-native-certs: on Debian `/etc/ssl/certs`, as
/// `update-ca-certificates` leaves it, so an operator's own CA added there is trusted too).
fn system_roots() -> RootCertStore {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, ignored) = roots.add_parsable_certificates(found.certs);
    for e in found.errors.iter().take(3) {
        tracing::warn!("prober: reading the system's CA certificates: {e}");
    }
    if added == 0 {
        tracing::warn!(
            "prober: no system CA certificate found: TLS probes with tls_verify on fail until ca-certificates is installed or the service names a tls_ca_file"
        );
    } else {
        tracing::info!("prober: {added} system CA certificates ({ignored} unusable ones skipped)");
    }
    roots
}

/// The name a server's certificate is checked against, as rustls takes it.
pub fn server_name(name: &str) -> Option<ServerName<'static>> {
    ServerName::try_from(name.to_string()).ok()
}

/// The most certificates a server's chain may hold, its own included (a public CA's chain has
/// two to four; webpki builds paths of at most six intermediates).
pub const MAX_CHAIN_CERTIFICATES: usize = 10;
/// The most bytes a server's chain may hold, all certificates together (a public CA's chain is
/// 3 to 8 KB).
pub const MAX_CHAIN_BYTES: usize = 32 * 1024;

/// Refuses a chain longer or larger than [`MAX_CHAIN_CERTIFICATES`] and [`MAX_CHAIN_BYTES`]
/// before the inner verifier looks at it. rustls keeps the chain for the connection and copies
/// all of it for every TLS 1.3 session ticket the server sends, whether or not resumption is
/// on; a chain padded to 64 KB with thousands of tiny entries made one record of packed tickets
/// cost millions of allocations (a prober frozen for seconds). With these bounds a ticket costs
/// at most ten allocations and 32 KB of copying, and [`MAX_IDLE_BYTES`] bounds the tickets.
#[derive(Debug)]
struct BoundedChain(Arc<dyn ServerCertVerifier>);

impl ServerCertVerifier for BoundedChain {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let count = intermediates.len().saturating_add(1);
        let bytes = intermediates.iter().fold(end_entity.len(), |sum, c| sum.saturating_add(c.len()));
        if count > MAX_CHAIN_CERTIFICATES || bytes > MAX_CHAIN_BYTES {
            let why = format!(
                "the server's chain holds {count} certificates, {bytes} bytes (at most {MAX_CHAIN_CERTIFICATES}, {MAX_CHAIN_BYTES} bytes)"
            );
            return Err(rustls::Error::InvalidCertificate(CertificateError::Other(rustls::OtherError(Arc::new(
                ChainTooLarge(why),
            )))));
        }
        self.0.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.0.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.0.root_hint_subjects()
    }
}

/// Why [`BoundedChain`] refused a chain (its Debug is its words: rustls shows it so).
struct ChainTooLarge(String);

impl std::fmt::Debug for ChainTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::fmt::Display for ChainTooLarge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ChainTooLarge {}

/// `tls_verify = false`: any certificate is accepted, but the handshake's signatures are still
/// checked (the server must hold the key of the certificate it sent).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The reason a rustls error gives a failed probe.
pub fn failure_of(error: &rustls::Error) -> TlsFailure {
    use CertificateError as C;
    match error {
        rustls::Error::InvalidCertificate(C::Expired | C::ExpiredContext { .. }) => TlsFailure::Expired,
        rustls::Error::InvalidCertificate(C::NotValidYet | C::NotValidYetContext { .. }) => TlsFailure::NotYetValid,
        rustls::Error::InvalidCertificate(C::NotValidForName | C::NotValidForNameContext { .. }) => {
            TlsFailure::NameMismatch
        }
        rustls::Error::InvalidCertificate(C::UnknownIssuer) => TlsFailure::UnknownIssuer,
        rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented => TlsFailure::BadCertificate,
        rustls::Error::AlertReceived(_) => TlsFailure::Alert,
        _ => TlsFailure::Handshake,
    }
}

/// The most one [`step`] reads from the socket. What a step decrypts and processes is what it
/// read (and at most one record begun earlier), so its work is bounded whatever the records
/// hold; a record larger than this arrives over several steps.
pub const STEP_READ: usize = 4096;

/// The most a connection may read after its handshake beyond the reply's plaintext: one record
/// still in flight (at most 16 KiB and 261 bytes), and some 16 KiB of record overhead and
/// session tickets (a reply's records cost 22 bytes each; a server sends a ticket or two).
/// A peer past it is feeding rustls records that carry no reply (KeyUpdates, tickets, empty or
/// one-byte records) and the probe fails: each of those costs the prober work (a key
/// derivation, a copy of the certificate chain) that no reply limit would ever stop.
pub const MAX_IDLE_BYTES: usize = 32 * 1024;

/// One probe's TLS client, with what it has read so far.
pub struct Session {
    conn: ClientConnection,
    /// Bytes read from the socket after the handshake.
    read_secured: usize,
    /// Plaintext bytes handed to the caller.
    plaintext: usize,
}

impl Session {
    /// A client for one probe of the server named `name`.
    pub fn new(config: Arc<ClientConfig>, name: ServerName<'static>) -> Result<Session, rustls::Error> {
        Ok(Session { conn: ClientConnection::new(config, name)?, read_secured: 0, plaintext: 0 })
    }
}

/// How one [`step`] ended the connection, if it did.
#[derive(Debug)]
pub enum End {
    /// The handshake failed: the reason, and rustls's own words for the log.
    Failed(TlsFailure, String),
    /// The peer closed the connection after the handshake (or the socket failed).
    Closed,
    /// The socket could not be read or written.
    Io,
}

/// What one [`step`] did.
#[derive(Debug, Default)]
pub struct Step {
    /// The handshake completed during this step.
    pub secured: bool,
    /// Plaintext bytes now at the start of the caller's buffer.
    pub plaintext: usize,
    /// The socket had nothing more to read (edge-triggered: wait for the next event).
    pub drained: bool,
    /// The connection ended.
    pub end: Option<End>,
}

/// Writes out whatever rustls has queued, until the socket would block.
fn flush(tls: &mut ClientConnection, stream: &mut impl Write) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
            // A socket that takes nothing is not going to take the rest.
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Queues `request` as plaintext and writes what it can now (a request is a few hundred
/// bytes: the rest, if any, goes out on the next writable event through [`step`]).
pub fn send(session: &mut Session, stream: &mut impl Write, request: &[u8]) -> io::Result<()> {
    session.conn.writer().write_all(request)?;
    flush(&mut session.conn, stream)
}

/// One bounded step of a probe's TLS connection: flush, one read of at most [`STEP_READ`]
/// bytes from the socket, decrypt, flush the handshake's replies, and move the decrypted bytes
/// into `buf`.
pub fn step(session: &mut Session, stream: &mut (impl Read + Write), buf: &mut [u8]) -> Step {
    let mut out = Step::default();
    let tls = &mut session.conn;
    let handshaking = tls.is_handshaking();
    if flush(tls, stream).is_err() {
        out.end = Some(End::Io);
        return out;
    }
    let (eof, read) = match tls.read_tls(&mut Read::by_ref(stream).take(STEP_READ as u64)) {
        Ok(0) => (true, 0),
        Ok(n) => (false, n),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            out.drained = e.kind() == io::ErrorKind::WouldBlock;
            (false, 0)
        }
        // read_tls refuses to buffer more than rustls allows; the plaintext is drained below, so
        // a peer that still overflows it is sending something else than a reply.
        Err(_) => {
            out.end = Some(End::Io);
            return out;
        }
    };
    let state = match tls.process_new_packets() {
        Ok(state) => state,
        Err(e) => {
            // The alert rustls queued for the peer; the connection is closed either way.
            let _alert = flush(tls, stream);
            let why = if handshaking { failure_of(&e) } else { TlsFailure::Protocol };
            out.end = Some(End::Failed(why, e.to_string()));
            return out;
        }
    };
    if flush(tls, stream).is_err() {
        out.end = Some(End::Io);
        return out;
    }
    out.secured = handshaking && !tls.is_handshaking();
    if state.plaintext_bytes_to_read() > 0 {
        match tls.reader().read(buf) {
            Ok(n) => out.plaintext = n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => out.end = Some(End::Closed),
        }
    }
    if !handshaking {
        session.read_secured = session.read_secured.saturating_add(read);
    }
    session.plaintext = session.plaintext.saturating_add(out.plaintext);
    if out.end.is_none() && session.read_secured.saturating_sub(session.plaintext) > MAX_IDLE_BYTES {
        let detail = format!(
            "{} bytes of TLS records after the handshake brought {} bytes of reply",
            session.read_secured, session.plaintext
        );
        out.end = Some(End::Failed(TlsFailure::Idle, detail));
        return out;
    }
    if out.end.is_none() && (eof || state.peer_has_closed()) {
        out.end = Some(if tls.is_handshaking() {
            End::Failed(TlsFailure::Closed, "the server closed the connection during the handshake".into())
        } else {
            End::Closed
        });
    }
    out
}
