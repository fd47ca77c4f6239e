//! TLS for the prober's driver: one rustls client configuration per service, and the step that
//! moves one probe's [`ClientConnection`] over its non-blocking TCP stream.
//!
//! ```text
//!  mio event ─► step(): write_tls (flush) ─► read_tls (one read) ─► process_new_packets
//!                      ─► write_tls (handshake replies) ─► reader(): plaintext into the buffer
//!               returns: secured now? · plaintext bytes · how the connection ended, if it did
//!  driver ─► core: Event::Secured · Event::Stream(plaintext) · Event::TlsFailed / Closed
//! ```
//!
//! The core never sees TLS: after the handshake it gets the decrypted bytes exactly as it gets a
//! TCP stream's, so its bounded framing applies unchanged. What a peer can make rustls hold is
//! bounded by rustls itself (a handshake message at most 64 KiB, at most 16 KiB of received
//! plaintext buffered before `read_tls` refuses more), and the driver drains the plaintext on
//! every step. Session resumption is off: every probe verifies the certificate in full, as a
//! phone's first handshake would, so an expired or replaced certificate fails the next probe.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
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
        let mut client = match &service.tls_verify {
            TlsVerify::System => {
                let roots = system.get_or_insert_with(|| Arc::new(system_roots())).clone();
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            TlsVerify::CaFile { path, certificates } => {
                let mut roots = RootCertStore::empty();
                for der in certificates {
                    roots.add(CertificateDer::from(der.clone())).map_err(|e| {
                        io::Error::other(format!("{}: a CA certificate is not usable: {e}", path.display()))
                    })?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            TlsVerify::Off => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider.clone())))
                .with_no_client_auth(),
        };
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
pub fn flush(tls: &mut ClientConnection, stream: &mut impl Write) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(stream) {
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
pub fn send(tls: &mut ClientConnection, stream: &mut impl Write, request: &[u8]) -> io::Result<()> {
    tls.writer().write_all(request)?;
    flush(tls, stream)
}

/// One bounded step of a probe's TLS connection: flush, one read from the socket, decrypt,
/// flush the handshake's replies, and move the decrypted bytes into `buf`.
pub fn step(tls: &mut ClientConnection, stream: &mut (impl Read + Write), buf: &mut [u8]) -> Step {
    let mut out = Step::default();
    let handshaking = tls.is_handshaking();
    if flush(tls, stream).is_err() {
        out.end = Some(End::Io);
        return out;
    }
    let eof = match tls.read_tls(stream) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
            out.drained = e.kind() == io::ErrorKind::WouldBlock;
            false
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
            out.end = Some(End::Failed(failure_of(&e), e.to_string()));
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
    if out.end.is_none() && (eof || state.peer_has_closed()) {
        out.end = Some(if tls.is_handshaking() {
            End::Failed(TlsFailure::Closed, "the server closed the connection during the handshake".into())
        } else {
            End::Closed
        });
    }
    out
}
