//! Which server certificate the agent accepts (issue 12, TLS).
//!
//! The agent trusts no public root: only the server's CA, pinned either by
//! the image (`/etc/landfall/server-ca.pem`, [`crate::secrets::SERVER_CA_FILE`])
//! or by `landfall.server_ca_sha256=` on the kernel line (the CA's or the
//! leaf's SHA-256, as `landfall ca-fingerprint` prints it). Any other chain
//! is refused in the handshake, before a byte of the hello is sent, and the
//! refusal names both fingerprints. Plain `http://` needs
//! `landfall.insecure_http=1`, and is refused whenever a CA is pinned.

use std::path::Path;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};

/// What the agent trusts for the server's certificate.
#[derive(Debug, Clone)]
pub enum ServerTrust {
    /// `landfall.insecure_http=1` and nothing pinned: plain `http://` only
    /// (an `https://` server is refused: there is nothing to check it against).
    InsecureHttp,
    /// The image's CA: the only root.
    Ca {
        der: CertificateDer<'static>,
        fingerprint: String,
        /// Where it came from, for messages.
        origin: String,
    },
    /// `landfall.server_ca_sha256=`: a certificate of the presented chain
    /// (the CA, or the leaf itself) must have this SHA-256.
    Fingerprint(String),
}

/// Lower-case hex SHA-256 of a DER certificate.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `landfall.server_ca_sha256=` as lower-case hex without separators
/// (`AB:CD:...` as openssl prints it is accepted too).
pub fn parse_fingerprint(v: &str) -> Result<String> {
    let hex: String = v
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!(
            "landfall.server_ca_sha256={v:?} is not a SHA-256 fingerprint: write the 64 hex \
             digits `landfall ca-fingerprint --data DIR` prints"
        );
    }
    Ok(hex)
}

impl ServerTrust {
    /// Decide from the server URL, the image's CA file (used when it
    /// exists), the kernel line's fingerprint and `insecure_http`.
    pub fn resolve(
        server: &str,
        ca_file: &Path,
        sha256: Option<&str>,
        insecure_http: bool,
    ) -> Result<Self> {
        let pem = match std::fs::read(ca_file) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e).with_context(|| format!("reading {}", ca_file.display())),
        };
        let origin = ca_file.display().to_string();
        Self::from_parts(server, pem.as_deref(), &origin, sha256, insecure_http)
    }

    /// The agent's trust: the image's CA in `etc_dir`, else the kernel line's.
    pub fn for_agent(cfg: &crate::cmdline::AgentConfig, etc_dir: &Path) -> Result<Self> {
        Self::resolve(
            &cfg.server,
            &etc_dir.join(crate::secrets::SERVER_CA_FILE),
            cfg.server_ca_sha256.as_deref(),
            cfg.insecure_http,
        )
    }

    /// The first-boot report's trust: what the agent pinned, handed on in verify.json.
    pub fn for_verify(cfg: &landfall_proto::verify::VerifyConfig) -> Result<Self> {
        Self::from_parts(
            &cfg.server,
            cfg.server_ca_pem.as_deref().map(str::as_bytes),
            "server_ca_pem of verify.json",
            cfg.server_ca_sha256.as_deref(),
            cfg.insecure_http,
        )
    }

    /// [`ServerTrust::resolve`] with the CA's PEM text already read.
    pub fn from_parts(
        server: &str,
        ca_pem: Option<&[u8]>,
        origin: &str,
        sha256: Option<&str>,
        insecure_http: bool,
    ) -> Result<Self> {
        let sha256 = sha256.map(parse_fingerprint).transpose()?;
        let http = server.starts_with("http://");
        let trust = match (ca_pem, sha256) {
            (Some(pem), sha256) => {
                let der = CertificateDer::from_pem_slice(pem).with_context(|| {
                    format!("{origin} is not a PEM certificate (-----BEGIN CERTIFICATE-----)")
                })?;
                let fp = fingerprint(&der);
                if let Some(want) = sha256.filter(|w| *w != fp) {
                    bail!(
                        "the image pins the server CA {origin} (SHA-256 {fp}) but the kernel \
                         line says landfall.server_ca_sha256={want}; drop one, or make them agree"
                    );
                }
                Self::Ca {
                    der,
                    fingerprint: fp,
                    origin: origin.to_owned(),
                }
            }
            (None, Some(fp)) => Self::Fingerprint(fp),
            (None, None) if http && insecure_http => Self::InsecureHttp,
            (None, None) if http => bail!(
                "landfall.server={server} is plain HTTP: the boot token, the inventory and \
                 the secrets' wrap token would cross the network in clear. Turn TLS on in the \
                 server ([server] listen_tls) and pin its CA, or add landfall.insecure_http=1 \
                 to the kernel line (development only)"
            ),
            (None, None) => bail!(
                "landfall.server={server} is HTTPS but no server CA is pinned: put the CA in \
                 the image as {} (iso module: landfall.installer.serverCa) or add \
                 landfall.server_ca_sha256=FINGERPRINT (`landfall ca-fingerprint`) to the \
                 kernel line; the agent trusts no public root",
                crate::secrets::SERVER_CA_FILE_PATH
            ),
        };
        if http && !matches!(trust, Self::InsecureHttp) {
            bail!(
                "landfall.server={server} is plain HTTP but the server's CA is pinned ({}): \
                 refusing to talk in clear; the server's boot script must name its https URL \
                 ([server] listen_tls)",
                trust.describe()
            );
        }
        Ok(trust)
    }

    /// The pin, for messages.
    pub fn describe(&self) -> String {
        match self {
            Self::InsecureHttp => "nothing pinned (landfall.insecure_http=1)".into(),
            Self::Ca {
                fingerprint,
                origin,
                ..
            } => format!("CA {origin}, SHA-256 {fingerprint}"),
            Self::Fingerprint(f) => format!("landfall.server_ca_sha256={f}"),
        }
    }

    /// Where the pin comes from, for messages.
    fn origin(&self) -> String {
        match self {
            Self::InsecureHttp => "landfall.insecure_http=1".into(),
            Self::Ca { origin, .. } => origin.clone(),
            Self::Fingerprint(_) => "landfall.server_ca_sha256=".into(),
        }
    }

    /// The kernel line's fingerprint, to hand on likewise.
    pub fn sha256(&self) -> Option<String> {
        match self {
            Self::Fingerprint(f) => Some(f.clone()),
            _ => None,
        }
    }

    /// The pinned CA's PEM, to hand on to the installed system's first-boot report.
    pub fn ca_pem(&self) -> Option<String> {
        match self {
            Self::Ca { der, .. } => Some(to_pem(der)),
            _ => None,
        }
    }

    /// The rustls client config that enforces this trust; refusals are
    /// also written to `refusal` (the HTTP client's error does not carry them).
    pub fn client_config(
        &self,
        refusal: Arc<Mutex<Option<String>>>,
    ) -> Result<rustls::ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let ca_verifier = match self {
            Self::Ca { der, .. } => Some(webpki_for(der.clone(), &provider)?),
            _ => None,
        };
        let verifier = PinnedVerifier {
            trust: self.clone(),
            ca_verifier,
            provider: provider.clone(),
            refusal,
        };
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("rustls protocol versions")?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier))
            .with_no_client_auth())
    }
}

fn to_pem(der: &[u8]) -> String {
    const TABLE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk.len();
        let v = (u32::from(chunk[0]) << 16)
            | (u32::from(*chunk.get(1).unwrap_or(&0)) << 8)
            | u32::from(*chunk.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= n {
                b64.push(TABLE[((v >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

fn webpki_for(
    root: CertificateDer<'static>,
    provider: &Arc<CryptoProvider>,
) -> Result<Arc<WebPkiServerVerifier>> {
    let mut roots = RootCertStore::empty();
    roots
        .add(root)
        .context("the pinned server CA is not a usable trust anchor")?;
    WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .context("building the certificate verifier for the pinned CA")
}

#[derive(Debug)]
struct PinnedVerifier {
    trust: ServerTrust,
    ca_verifier: Option<Arc<WebPkiServerVerifier>>,
    provider: Arc<CryptoProvider>,
    refusal: Arc<Mutex<Option<String>>>,
}

impl PinnedVerifier {
    fn refuse(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        why: &str,
    ) -> rustls::Error {
        let expected = match &self.trust {
            ServerTrust::InsecureHttp => "none (nothing pinned)".to_owned(),
            ServerTrust::Ca { fingerprint, .. } | ServerTrust::Fingerprint(fingerprint) => {
                fingerprint.clone()
            }
        };
        let leaf = fingerprint(end_entity);
        let top = intermediates.last().map(|c| fingerprint(c));
        let presented = match &top {
            Some(ca) => format!("{ca} (its CA; leaf {leaf})"),
            None => format!("{leaf} (a leaf alone)"),
        };
        let msg = format!(
            "refused the server's certificate before registering: expected SHA-256 {expected} \
             (pinned by {}), presented {presented}: {why}",
            self.trust.origin()
        );
        tracing::error!("{msg}");
        *self.refusal.lock().unwrap_or_else(|e| e.into_inner()) = Some(msg.clone());
        rustls::Error::General(msg)
    }
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let check = |v: &WebPkiServerVerifier| {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
                .map_err(|e| self.refuse(end_entity, intermediates, &e.to_string()))
        };
        match &self.trust {
            ServerTrust::InsecureHttp => Err(self.refuse(
                end_entity,
                intermediates,
                "no CA is pinned, so no certificate can be trusted",
            )),
            ServerTrust::Ca { .. } => check(self.ca_verifier.as_ref().expect("built with Ca")),
            ServerTrust::Fingerprint(want) => {
                if fingerprint(end_entity) == *want {
                    // The leaf itself is pinned: it is exactly the expected certificate.
                    return Ok(ServerCertVerified::assertion());
                }
                let Some(ca) = intermediates.iter().find(|c| fingerprint(c) == *want) else {
                    return Err(self.refuse(
                        end_entity,
                        intermediates,
                        "no certificate of the chain has the pinned fingerprint",
                    ));
                };
                let v = webpki_for(ca.clone().into_owned(), &self.provider)
                    .map_err(|e| self.refuse(end_entity, intermediates, &format!("{e:#}")))?;
                check(&v)
            }
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_with_or_without_colons() {
        let hex = "ab".repeat(32);
        assert_eq!(parse_fingerprint(&hex).unwrap(), hex);
        let colons = vec!["AB"; 32].join(":");
        assert_eq!(parse_fingerprint(&colons).unwrap(), hex);
        let e = parse_fingerprint("abc").unwrap_err().to_string();
        assert!(
            e.contains("landfall.server_ca_sha256") && e.contains("ca-fingerprint"),
            "{e}"
        );
    }

    #[test]
    fn plain_http_needs_insecure_http_and_no_pin() {
        let e = ServerTrust::from_parts("http://10.0.2.2:8080", None, "-", None, false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("landfall.insecure_http=1"), "{e}");
        assert!(matches!(
            ServerTrust::from_parts("http://10.0.2.2:8080", None, "-", None, true).unwrap(),
            ServerTrust::InsecureHttp
        ));
        // A pin beats the kernel line's insecure_http: no clear text then.
        let fp = "00".repeat(32);
        let e = ServerTrust::from_parts("http://x:1", None, "-", Some(&fp), true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("plain HTTP") && e.contains(&fp), "{e}");
        // https with nothing pinned.
        let e = ServerTrust::from_parts("https://x:1", None, "-", None, true)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server-ca.pem") && e.contains("server_ca_sha256"),
            "{e}"
        );
    }

    #[test]
    fn pem_round_trips() {
        let der = CertificateDer::from(vec![1u8, 2, 3, 4, 5, 250, 251]);
        let pem = to_pem(&der);
        let back = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap();
        assert_eq!(back.as_ref(), der.as_ref());
    }
}
