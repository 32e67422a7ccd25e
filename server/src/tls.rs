//! HTTPS for the agent and admin API (issue 12, TLS).
//!
//! Either the operator's PEM files (`[server] tls_cert`/`tls_key`) or a CA and
//! a server certificate this module generates at first start in `DATA/tls/`:
//! `ca.pem`, `ca.key` (0600), `server.pem` (the leaf, then the CA),
//! `server.key` (0600) and `server.sans` (the names the leaf was made for).
//! The CA is kept across restarts; the leaf is made again when the names
//! change, so machines that pin the CA keep working.
//!
//! The handshakes run in each connection's own task (`crate::conn`), bounded
//! by `[server.http] tls_handshake_timeout_secs`: a client that never
//! finishes one holds only its task and its connection permit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

/// Directory of the generated CA and server certificate, inside the data dir.
pub const TLS_DIR: &str = "tls";
pub const CA_CERT_FILE: &str = "ca.pem";
pub const CA_KEY_FILE: &str = "ca.key";
pub const SERVER_CERT_FILE: &str = "server.pem";
pub const SERVER_KEY_FILE: &str = "server.key";
/// The names the generated server certificate holds, one a line.
pub const SANS_FILE: &str = "server.sans";

/// Where the certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertSource {
    /// The operator's PEM files: the chain (leaf first) and its key.
    Files { cert: PathBuf, key: PathBuf },
    /// A CA and a leaf generated in `DATA/tls/` for these names (DNS names or IPs).
    Generated { sans: Vec<String> },
}

/// The certificate and key, ready for rustls.
pub struct Identity {
    pub config: Arc<rustls::ServerConfig>,
    /// The generated CA's PEM path (the file to put in the installer image),
    /// `None` for the operator's certificate.
    pub ca_file: Option<PathBuf>,
}

/// Lower-case hex SHA-256 of a DER certificate: what `landfall.server_ca_sha256=` takes.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The certificates of a PEM file, in order.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("reading {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing the PEM certificates in {}", path.display()))?;
    if certs.is_empty() {
        bail!(
            "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        );
    }
    Ok(certs)
}

/// The SHA-256 fingerprint of the generated CA in `data`.
pub fn ca_fingerprint(data: &Path) -> Result<String> {
    let path = data.join(TLS_DIR).join(CA_CERT_FILE);
    if !path.is_file() {
        bail!(
            "{} does not exist: the server makes its CA at the first start with \
             [server] listen_tls set and no tls_cert (with the operator's own \
             certificate, take the fingerprint of its CA instead)",
            path.display()
        );
    }
    let certs = read_certs(&path)?;
    Ok(fingerprint(&certs[0]))
}

/// Load the operator's certificate or make (or reuse) the generated one.
pub fn load_identity(data: &Path, source: &CertSource) -> Result<Identity> {
    let (chain, key, ca_file) = match source {
        CertSource::Files { cert, key } => {
            let chain = read_certs(cert)?;
            let key = PrivateKeyDer::from_pem_file(key).with_context(|| {
                format!(
                    "reading the private key in {} (server.tls_key: a PEM PKCS#8, \
                     PKCS#1 or SEC1 key)",
                    key.display()
                )
            })?;
            (chain, key, None)
        }
        CertSource::Generated { sans } => {
            let dir = data.join(TLS_DIR);
            generate(&dir, sans)?;
            let chain = read_certs(&dir.join(SERVER_CERT_FILE))?;
            let key_path = dir.join(SERVER_KEY_FILE);
            let key = PrivateKeyDer::from_pem_file(&key_path)
                .with_context(|| format!("reading {}", key_path.display()))?;
            (chain, key, Some(dir.join(CA_CERT_FILE)))
        }
    };
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .context("rustls protocol versions")?
    .with_no_client_auth()
    .with_single_cert(chain, key)
    .context(
        "the TLS certificate and key do not form a usable pair (server.tls_cert, server.tls_key)",
    )?;
    Ok(Identity {
        config: Arc::new(config),
        ca_file,
    })
}

/// Make the CA if missing, and the leaf if missing or made for other names.
/// Returns whether a new leaf was written.
pub fn generate(dir: &Path, sans: &[String]) -> Result<bool> {
    make_private_dir(dir)?;
    let ca_cert = dir.join(CA_CERT_FILE);
    let ca_key_path = dir.join(CA_KEY_FILE);
    let ca_key = match (ca_cert.is_file(), ca_key_path.is_file()) {
        (true, true) => {
            let pem = std::fs::read_to_string(&ca_key_path)
                .with_context(|| format!("reading {}", ca_key_path.display()))?;
            KeyPair::from_pem(&pem).with_context(|| format!("parsing {}", ca_key_path.display()))?
        }
        (false, false) => {
            let key = KeyPair::generate().context("generating the CA key")?;
            let cert = ca_params()
                .self_signed(&key)
                .context("signing the CA certificate")?;
            write_private(&ca_key_path, key.serialize_pem().as_bytes())?;
            write_file(&ca_cert, cert.pem().as_bytes(), 0o644)?;
            tracing::info!(
                fingerprint = %fingerprint(cert.der()),
                "made a TLS CA in {} (landfall ca-fingerprint prints its fingerprint)",
                ca_cert.display()
            );
            // A new CA: the old leaf (if any) is not signed by it.
            let _ = std::fs::remove_file(dir.join(SANS_FILE));
            key
        }
        _ => bail!(
            "{} and {} must both exist or both be missing; restore the missing one, \
             or delete both to make a new CA (every installer image that pins the old \
             CA must then be rebuilt)",
            ca_cert.display(),
            ca_key_path.display()
        ),
    };

    let sans_path = dir.join(SANS_FILE);
    let wanted = sans.join("\n") + "\n";
    let have = std::fs::read_to_string(&sans_path).ok();
    if have.as_deref() == Some(wanted.as_str())
        && dir.join(SERVER_CERT_FILE).is_file()
        && dir.join(SERVER_KEY_FILE).is_file()
    {
        return Ok(false);
    }
    let issuer = Issuer::new(ca_params(), ca_key);
    let key = KeyPair::generate().context("generating the server key")?;
    let mut params = CertificateParams::new(sans.to_vec()).with_context(|| {
        format!("server.tls_sans: {sans:?} holds a name that is not a DNS name or IP address")
    })?;
    params
        .distinguished_name
        .push(DnType::CommonName, "landfall server");
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let from = year_now();
    params.not_before = rcgen::date_time_ymd(from - 1, 1, 1);
    params.not_after = rcgen::date_time_ymd(from + 5, 1, 1);
    let cert = params
        .signed_by(&key, &issuer)
        .context("signing the server certificate")?;
    let ca_pem = std::fs::read_to_string(&ca_cert)
        .with_context(|| format!("reading {}", ca_cert.display()))?;
    write_private(&dir.join(SERVER_KEY_FILE), key.serialize_pem().as_bytes())?;
    write_file(
        &dir.join(SERVER_CERT_FILE),
        format!("{}{}", cert.pem(), ca_pem).as_bytes(),
        0o644,
    )?;
    write_file(&sans_path, wanted.as_bytes(), 0o644)?;
    tracing::info!(names = %sans.join(", "), "made the TLS server certificate");
    Ok(true)
}

/// The CA's parameters: the same every time, so a restart signs with the kept key.
fn ca_params() -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(DnType::CommonName, "landfall provisioning CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let from = year_now();
    p.not_before = rcgen::date_time_ymd(from - 1, 1, 1);
    p.not_after = rcgen::date_time_ymd(from + 20, 1, 1);
    p
}

/// The current year (to within a day: enough for validity bounds a year wide).
fn year_now() -> i32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    1970 + (secs / 31_556_952) as i32
}

fn make_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .with_context(|| format!("setting mode 0700 on {}", dir.display()))
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    write_file(path, bytes, 0o600)
}

/// Write through a temporary file and rename, so a crash leaves the old file or the new one.
fn write_file(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}
