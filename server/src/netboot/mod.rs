//! Network boot for firmware that is not iPXE yet: the iPXE binaries over
//! TFTP ([`tftp`]) and HTTP, and a built-in DHCP ([`dhcp`]: proxy or full)
//! that hands each client the right one, and iPXE itself the `boot.ipxe`
//! URL. What a machine then boots stays [`crate::boot`]'s decision.
//!
//! [`config`] prints the same answers as a snippet for a site's own DHCP
//! server (`landfall dhcp-config`).

pub mod config;
pub mod dhcp;
pub mod tftp;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use axum::extract::{Path as UrlPath, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::config::{DhcpMode, NetbootSettings};
use crate::store::Store;

/// URL path under which the iPXE binaries are served over HTTP (UEFI HTTP Boot).
pub const HTTP_PREFIX: &str = "/netboot";

/// Which iPXE a client gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpxeKind {
    /// BIOS PXE: `undionly.kpxe` (the UNDI driver of the PXE ROM).
    Bios,
    /// x86-64 UEFI: `snponly.efi` or `ipxe.efi`.
    EfiX86_64,
    /// arm64 UEFI.
    EfiArm64,
}

/// The served names of the configured iPXE binaries, and their contents.
#[derive(Debug, Clone, Default)]
pub struct IpxeFiles {
    pub bios: Option<String>,
    pub efi_x86_64: Option<String>,
    pub efi_arm64: Option<String>,
    pub files: tftp::Files,
}

impl IpxeFiles {
    /// Read the binaries named in `[netboot]`: each is served under its file
    /// name, the arm64 one under `arm64/NAME` (its name is often the x86 one's).
    pub fn load(n: &NetbootSettings) -> Result<Self> {
        let mut out = Self::default();
        for (kind, path) in [
            (IpxeKind::Bios, &n.ipxe_bios),
            (IpxeKind::EfiX86_64, &n.ipxe_efi_x86_64),
            (IpxeKind::EfiArm64, &n.ipxe_efi_arm64),
        ] {
            let Some(path) = path else { continue };
            let name = served_name(kind, path)?;
            let data = std::fs::read(path).with_context(|| {
                format!(
                    "reading the iPXE binary {}; install it (Debian's `ipxe` package, nixpkgs' \
                     `ipxe`) or fix the [netboot] path",
                    path.display()
                )
            })?;
            if out.files.contains_key(&name) {
                bail!(
                    "[netboot]: two iPXE binaries are both named {name}; rename one of the files"
                );
            }
            out.files.insert(name.clone(), Arc::from(data));
            match kind {
                IpxeKind::Bios => out.bios = Some(name),
                IpxeKind::EfiX86_64 => out.efi_x86_64 = Some(name),
                IpxeKind::EfiArm64 => out.efi_arm64 = Some(name),
            }
        }
        Ok(out)
    }

    /// The served name for `kind`, if configured.
    pub fn name(&self, kind: IpxeKind) -> Option<&str> {
        match kind {
            IpxeKind::Bios => self.bios.as_deref(),
            IpxeKind::EfiX86_64 => self.efi_x86_64.as_deref(),
            IpxeKind::EfiArm64 => self.efi_arm64.as_deref(),
        }
    }
}

/// The names of Debian's BIOS and x86-64 EFI iPXE, no arm64 one (unit tests).
#[cfg(test)]
pub(crate) fn test_files() -> IpxeFiles {
    IpxeFiles {
        bios: Some("undionly.kpxe".into()),
        efi_x86_64: Some("snponly.efi".into()),
        efi_arm64: None,
        files: Default::default(),
    }
}

fn served_name(kind: IpxeKind, path: &Path) -> Result<String> {
    let base = path
        .file_name()
        .and_then(|n| n.to_str())
        .filter(|n| {
            n.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
        .with_context(|| {
            format!(
                "the iPXE binary {}: its file name must be plain ASCII (letters, digits, . _ -); \
                 link it under a name like snponly.efi",
                path.display()
            )
        })?;
    Ok(match kind {
        IpxeKind::EfiArm64 => format!("arm64/{base}"),
        _ => base.to_owned(),
    })
}

/// The iPXE binaries over HTTP, for UEFI HTTP Boot: `GET /netboot/NAME`.
pub fn http_router(files: Arc<IpxeFiles>) -> Router {
    Router::new()
        .route(&format!("{HTTP_PREFIX}/{{*name}}"), get(http_file))
        .with_state(files)
}

async fn http_file(
    State(files): State<Arc<IpxeFiles>>,
    UrlPath(name): UrlPath<String>,
) -> Response {
    match files.files.get(&name) {
        Some(data) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            data.to_vec(),
        )
            .into_response(),
        None => (StatusCode::NOT_FOUND, "not an iPXE binary served here\n").into_response(),
    }
}

/// Where machines reach this server: the base URL of `boot.ipxe` and the
/// HTTP iPXE binaries, and the address TFTP is named by.
#[derive(Debug, Clone)]
pub struct Endpoints {
    /// Base URL without a trailing slash, e.g. `http://10.77.0.1:8080`.
    pub http_base: String,
    /// This server's address on the boot network (`next-server`).
    pub server_address: Ipv4Addr,
}

impl Endpoints {
    /// `server.public_url`, else `http://SERVER_ADDRESS:HTTP_PORT`.
    pub fn new(public_url: Option<&str>, server_address: Ipv4Addr, http_port: u16) -> Self {
        Self {
            http_base: public_url
                .map(|u| u.trim_end_matches('/').to_owned())
                .unwrap_or_else(|| format!("http://{server_address}:{http_port}")),
            server_address,
        }
    }

    /// The iPXE script URL for this MAC; iPXE fills in its architecture and
    /// platform (`${...}` in a DHCP boot file name is expanded by iPXE).
    pub fn boot_url(&self, mac: &str) -> String {
        format!(
            "{}/boot.ipxe?mac={mac}&arch=${{buildarch}}&platform=${{platform}}",
            self.http_base
        )
    }

    /// The http URL of a served iPXE binary.
    pub fn binary_url(&self, name: &str) -> String {
        format!("{}{HTTP_PREFIX}/{name}", self.http_base)
    }
}

/// The running TFTP and DHCP servers.
pub struct Netboot {
    pub tftp: Option<tftp::TftpServer>,
    pub dhcp: Option<dhcp::DhcpServer>,
}

impl Netboot {
    /// Start what `[netboot]` asks for. `http` is the HTTP server's bound address.
    pub async fn start(
        n: &NetbootSettings,
        files: Arc<IpxeFiles>,
        public_url: Option<&str>,
        http: SocketAddr,
        store: Store,
    ) -> Result<Self> {
        let tftp = if n.tftp {
            // Bound to the wildcard address: a PXE ROM asks at `next-server`,
            // whichever interface that is on.
            Some(
                tftp::TftpServer::start(
                    SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), n.tftp_port),
                    files.files.clone(),
                    tftp::Limits::default(),
                )
                .await?,
            )
        } else {
            None
        };
        let dhcp = match (n.dhcp, n.server_address, &n.interface) {
            (DhcpMode::Off, _, _) => None,
            (mode, Some(addr), Some(iface)) => {
                let ep = Endpoints::new(public_url, addr, http.port());
                Some(
                    dhcp::DhcpServer::start(dhcp::DhcpOptions {
                        mode,
                        interface: iface.clone(),
                        endpoints: ep,
                        files,
                        pool: n.pool.clone(),
                        dhcp_port: n.dhcp_port,
                        pxe_port: n.pxe_port,
                        store,
                    })
                    .await?,
                )
            }
            // set_mode refused this at validation.
            (mode, _, _) => bail!("dhcp = {mode} needs netboot.interface and server_address"),
        };
        Ok(Self { tftp, dhcp })
    }

    pub async fn shutdown(self) {
        if let Some(t) = self.tftp {
            t.shutdown().await;
        }
        if let Some(d) = self.dhcp {
            d.shutdown().await;
        }
    }
}
