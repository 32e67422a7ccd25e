//! Command line: `serve` and the admin commands (`machines`, `machine`, `reinstall`, `retry`),
//! which talk to a running server through the admin API.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use std::io::Write;

use landfall_proto::admin::{
    AttemptDetail, MachineDetail, MachineListQuery, MachineSummary, RetryResponse,
    MAX_MACHINES_PAGE,
};
use landfall_proto::agent::ErrorBody;
use landfall_proto::notify::{Delivery, DeliveryStatus};
use landfall_proto::Event;

use crate::api::admin::{approve_text, reinstall_text, retry_text};
use crate::ServeOptions;

#[derive(Debug, Parser)]
#[command(
    name = "landfall",
    version,
    about = "Zero-touch NixOS provisioning server"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the provisioning server (iPXE scripts, artifacts, agent and admin API).
    Serve(ServeArgs),
    /// List the machines the server knows (every page of the admin API's list).
    Machines {
        #[command(flatten)]
        client: ClientArgs,
        /// Only machines in this state (e.g. failed, installing).
        #[arg(long)]
        state: Option<String>,
        /// Only machines of this role.
        #[arg(long)]
        role: Option<String>,
        /// Only machines whose hostname, MAC or role contains this text.
        #[arg(long)]
        search: Option<String>,
        /// At most this many machines (default: all).
        #[arg(long)]
        limit: Option<u64>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one machine: inventory, attempts, events.
    Machine {
        /// MAC address or hostname.
        machine: String,
        #[command(flatten)]
        client: ClientArgs,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Release a machine held because its identity differs from the one
    /// pinned at its first install, pinning the presented one; it installs
    /// on its next PXE boot.
    Approve {
        /// MAC address or hostname.
        machine: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Reinstall a machine on its next PXE boot.
    Reinstall {
        /// MAC address or hostname.
        machine: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the SHA-256 fingerprint of the CA the server made for HTTPS
    /// (what `landfall.server_ca_sha256=` on the kernel line takes).
    CaFingerprint {
        /// Data directory of the server (its CA is DATA/tls/ca.pem).
        #[arg(long, default_value = "./landfall-data")]
        data: PathBuf,
    },
    /// Let a failed install run again from the failed step (its installer
    /// is still running and waiting); only for machines in state `failed`.
    Retry {
        /// MAC address or hostname.
        machine: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// List the webhook deliveries, newest first: what was delivered, what
    /// is still tried, what was given up.
    Notifications {
        #[command(flatten)]
        client: ClientArgs,
        /// Only deliveries in this status.
        #[arg(long, value_parser = ["pending", "delivered", "failed"])]
        status: Option<String>,
        /// At most this many (the server sends at most 1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the network boot options as a snippet for a site's own DHCP
    /// server (PXE/HTTP Boot classes, the iPXE loop break, the boot URL).
    DhcpConfig(DhcpConfigArgs),
    /// Read a password on stdin and print its argon2id hash, for
    /// `password_hash` of `[[dashboard.users]]` in landfall.toml.
    HashPassword,
}

#[derive(Debug, Args)]
pub struct DhcpConfigArgs {
    /// The DHCP server to print the snippet for.
    #[arg(long = "for", value_enum)]
    pub site: crate::netboot::config::SiteDhcp,
    /// landfall.toml: its [netboot] iPXE binaries and server_address, and
    /// server.public_url.
    #[arg(long)]
    pub config: PathBuf,
    /// Port of landfall's HTTP server, for the boot URL when server.public_url
    /// is not set (it is then http://SERVER_ADDRESS:PORT).
    #[arg(long, default_value_t = 8080)]
    pub http_port: u16,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// landfall.toml; without it every machine is installed with role `demo`.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Data directory (database, admin token, default artifacts).
    #[arg(long, default_value = "./landfall-data")]
    pub data: PathBuf,
    /// Plain-HTTP address to listen on (port 0 picks a free port); default
    /// `server.listen` of the config, else 0.0.0.0:8080. HTTPS is
    /// `server.listen_tls` in the config.
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Directory of boot artifacts (vmlinuz, initrd); overrides server.artifacts.
    #[arg(long)]
    pub artifacts: Option<PathBuf>,
    /// PostgreSQL URL (postgres://user:password@host:port/db) shared by
    /// several servers; overrides server.database. Default: embedded SQLite
    /// in the data directory.
    #[arg(long, env = "LANDFALL_DATABASE")]
    pub database: Option<String>,
    /// Validate the configuration and exit (0 when valid, 1 otherwise).
    #[arg(long)]
    pub check_config: bool,
    /// Built-in DHCP: off, proxy (boot options only, beside the site's DHCP)
    /// or full (an address pool); overrides [netboot] dhcp.
    #[arg(long, value_enum)]
    pub dhcp: Option<crate::config::DhcpMode>,
}

#[derive(Debug, Args)]
pub struct ClientArgs {
    /// URL of the landfall server (`HOST:PORT` means `http://HOST:PORT`).
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    pub server: String,
    /// File holding the admin token (LANDFALL_ADMIN_TOKEN, when set, wins).
    #[arg(long, default_value = "./landfall-data/admin.token")]
    pub token_file: PathBuf,
    /// PEM file of the CA to trust for an https:// server (the only one
    /// trusted then), e.g. ./landfall-data/tls/ca.pem.
    #[arg(long)]
    pub ca: Option<PathBuf>,
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::CaFingerprint { data } => ca_fingerprint(&data),
        Command::DhcpConfig(a) => {
            print!("{}", dhcp_config(&a)?);
            Ok(())
        }
        Command::HashPassword => {
            println!("{}", crate::dashboard::auth::hash_password_from_stdin()?);
            Ok(())
        }
        Command::Machines {
            client,
            json,
            state,
            role,
            search,
            limit,
        } => {
            let client = Client::new(&client)?;
            let query = MachineListQuery {
                limit: Some(limit.unwrap_or(u64::MAX).clamp(1, MAX_MACHINES_PAGE)),
                cursor: None,
                state,
                role,
                q: search,
            };
            let mut list: Vec<MachineSummary> = Vec::new();
            let mut next = Some(format!(
                "/api/v1/machines?{}",
                serde_urlencoded_query(&query)?
            ));
            // Page after page, as the Link rel="next" headers lead.
            while let Some(path) = next.take() {
                if limit.is_some_and(|l| list.len() as u64 >= l) {
                    break;
                }
                let (page, link): (Vec<MachineSummary>, _) = client.get_page(&path).await?;
                list.extend(page);
                next = link;
            }
            if let Some(l) = limit {
                list.truncate(l as usize);
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", machines_table(&list));
            }
            Ok(())
        }
        Command::Machine {
            machine,
            client,
            json,
        } => {
            let client = Client::new(&client)?;
            let path = format!("/api/v1/machines/{}", path_segment(&machine)?);
            let mut d: MachineDetail = client.get(&path).await?;
            if json {
                for a in &mut d.attempts {
                    let mut pages = EventPages::new(&client, &path, a);
                    while let Some(events) = pages.next().await? {
                        a.events.extend(events);
                    }
                    a.more_events = false;
                }
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            // Page by page: neither the server nor this process holds every
            // event of a long install at once.
            let mut out = std::io::stdout().lock();
            out.write_all(machine_head(&d).as_bytes())?;
            for a in &d.attempts {
                out.write_all(attempt_text(a).as_bytes())?;
                let mut pages = EventPages::new(&client, &path, a);
                while let Some(events) = pages.next().await? {
                    for e in &events {
                        out.write_all(event_line(e).as_bytes())?;
                    }
                }
            }
            out.flush()?;
            Ok(())
        }
        Command::Approve { machine, client } => {
            let s: MachineSummary = Client::new(&client)?
                .post(&format!(
                    "/api/v1/machines/{}/approve",
                    path_segment(&machine)?
                ))
                .await?;
            println!("{}", approve_text(&s));
            Ok(())
        }
        Command::Reinstall { machine, client } => {
            let s: MachineSummary = Client::new(&client)?
                .post(&format!(
                    "/api/v1/machines/{}/reinstall",
                    path_segment(&machine)?
                ))
                .await?;
            println!("{}", reinstall_text(&s));
            Ok(())
        }
        Command::Notifications {
            client,
            status,
            limit,
            json,
        } => {
            let mut path = format!("/api/v1/notifications?limit={limit}");
            if let Some(st) = status {
                path.push_str(&format!("&status={st}"));
            }
            let list: Vec<Delivery> = Client::new(&client)?.get(&path).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                print!("{}", notifications_table(&list));
            }
            Ok(())
        }
        Command::Retry { machine, client } => {
            let r: RetryResponse = Client::new(&client)?
                .post(&format!(
                    "/api/v1/machines/{}/retry",
                    path_segment(&machine)?
                ))
                .await?;
            println!("{}", retry_text(&r));
            Ok(())
        }
    }
}

/// The pages of an attempt's events after the first (which came with the
/// machine's detail), asked for with `?attempt=ID&events_after=SEQ`.
struct EventPages<'a> {
    client: &'a Client,
    path: &'a str,
    attempt: String,
    after: u64,
    more: bool,
}

impl<'a> EventPages<'a> {
    fn new(client: &'a Client, path: &'a str, first: &AttemptDetail) -> Self {
        Self {
            client,
            path,
            attempt: first.attempt_id.clone(),
            after: first.events.last().map_or(0, |e| e.seq),
            more: first.more_events && !first.events.is_empty(),
        }
    }

    async fn next(&mut self) -> Result<Option<Vec<Event>>> {
        if !self.more {
            return Ok(None);
        }
        let d: MachineDetail = self
            .client
            .get(&format!(
                "{}?attempt={}&events_after={}",
                self.path,
                path_segment(&self.attempt)?,
                self.after
            ))
            .await?;
        let Some(a) = d
            .attempts
            .into_iter()
            .find(|a| a.attempt_id == self.attempt)
        else {
            self.more = false;
            return Ok(None);
        };
        // A page that does not move on ends the paging (never a loop).
        match a.events.last() {
            Some(e) if e.seq > self.after => self.after = e.seq,
            _ => {
                self.more = false;
                return Ok(None);
            }
        }
        self.more = a.more_events;
        Ok(Some(a.events))
    }
}

/// The plain-HTTP port when neither `--listen` nor `server.listen` says.
pub const DEFAULT_HTTP_PORT: u16 = 8080;

/// `server.listen` of the config file, if set (the whole file is validated by `serve`).
fn config_listen(config: Option<&std::path::Path>) -> Result<Option<SocketAddr>> {
    let Some(path) = config else { return Ok(None) };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    let cfg = crate::config::Config::parse(&text)
        .with_context(|| format!("parsing config file {}", path.display()))?;
    cfg.server
        .listen
        .map(|l| {
            l.parse().map_err(|_| {
                anyhow::anyhow!(
                    "server.listen = {l:?} in {} is not an IP address and port; write e.g. \"0.0.0.0:8080\"",
                    path.display()
                )
            })
        })
        .transpose()
}

/// `landfall ca-fingerprint`: the generated CA's SHA-256, for `landfall.server_ca_sha256=`.
fn ca_fingerprint(data: &std::path::Path) -> Result<()> {
    println!("{}", crate::tls::ca_fingerprint(data)?);
    Ok(())
}

async fn serve(a: ServeArgs) -> Result<()> {
    if a.check_config {
        let s = crate::load_settings(a.config.as_deref())?;
        println!(
            "config OK: {} roles, {} machines, unknown machines: {:?}",
            s.roles.len(),
            s.machines.len(),
            s.unknown
        );
        return Ok(());
    }
    let listen = match a.listen {
        Some(l) => l,
        None => config_listen(a.config.as_deref())?
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_HTTP_PORT))),
    };
    let stop = shutdown_signal()?;
    let handle = crate::serve_with(
        ServeOptions {
            config: a.config,
            data: a.data,
            listen,
            artifacts: a.artifacts,
            database: a.database,
        },
        crate::NetbootOverrides { dhcp: a.dhcp },
    )
    .await?;
    stop.await;
    tracing::info!("shutting down");
    handle.shutdown().await
}

/// `landfall dhcp-config`: the snippet for the site's DHCP server.
fn dhcp_config(a: &DhcpConfigArgs) -> Result<String> {
    let s = crate::load_settings(Some(&a.config))?;
    let Some(addr) = s.netboot.server_address else {
        bail!(
            "{}: netboot.server_address is not set; set it to this server's IPv4 address on the \
             boot network (the TFTP next-server), e.g. server_address = \"10.77.0.1\"",
            a.config.display()
        );
    };
    let files = crate::netboot::IpxeFiles::load(&s.netboot)?;
    let ep = crate::netboot::Endpoints::new(s.public_url.as_deref(), addr, a.http_port);
    crate::netboot::config::render(a.site, &files, &ep)
}

/// SIGTERM or SIGINT, listened for from the moment this is called (not from
/// the first poll): a stop sent right after the server said it listens is
/// not lost, and does not kill the process with the default action.
fn shutdown_signal() -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}

/// A MAC or hostname is safe in a URL path as is; refuse anything else.
fn path_segment(key: &str) -> Result<&str> {
    if key.is_empty()
        || !key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b".-:".contains(&b))
    {
        bail!("{key:?} is neither a MAC address nor a hostname");
    }
    Ok(key)
}

/// `--server` as a base URL: `HOST:PORT` (no scheme) is `http://HOST:PORT`;
/// anything but an http(s) URL with a host is refused, naming the option.
fn server_base(server: &str) -> Result<String> {
    let s = server.trim();
    let with_scheme = if s.contains("://") {
        s.to_owned()
    } else {
        format!("http://{s}")
    };
    let with_scheme = with_scheme.trim_end_matches('/').to_owned();
    let bad = |why: &str| {
        anyhow::anyhow!(
            "--server {server:?}: {why}; give the server's URL, e.g. \
             --server http://10.0.0.1:8080 (or just 10.0.0.1:8080)"
        )
    };
    let url = reqwest::Url::parse(&with_scheme).map_err(|e| bad(&e.to_string()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad(&format!(
            "scheme {:?} is not http or https",
            url.scheme()
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("no host"));
    }
    Ok(with_scheme)
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
}

impl Client {
    fn new(a: &ClientArgs) -> Result<Self> {
        let token = match std::env::var("LANDFALL_ADMIN_TOKEN") {
            Ok(t) if !t.trim().is_empty() => t.trim().to_owned(),
            _ => std::fs::read_to_string(&a.token_file)
                .with_context(|| {
                    format!(
                        "reading the admin token from {} (or set LANDFALL_ADMIN_TOKEN)",
                        a.token_file.display()
                    )
                })?
                .trim()
                .to_owned(),
        };
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(ca) = &a.ca {
            let pem =
                std::fs::read(ca).with_context(|| format!("reading --ca {}", ca.display()))?;
            let cert = reqwest::Certificate::from_pem(&pem)
                .with_context(|| format!("--ca {} is not a PEM certificate", ca.display()))?;
            http = http
                .tls_built_in_root_certs(false)
                .add_root_certificate(cert);
        }
        Ok(Self {
            http: http.build()?,
            base: server_base(&a.server)?,
            token,
        })
    }

    async fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// GET a page: the answer and the path of its `Link: <...>; rel="next"`.
    async fn get_page<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<(T, Option<String>)> {
        let url = format!("{}{path}", self.base);
        let resp = self
            .http
            .get(&url)
            .bearer_auth(&self.token)
            .send()
            .await
            .with_context(|| format!("requesting {url}"))?;
        let next = resp
            .headers()
            .get_all(reqwest::header::LINK)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(next_link);
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{url}: server answered {status}: {msg}");
        }
        let v = serde_json::from_slice(&body)
            .with_context(|| format!("parsing the answer of {url}"))?;
        Ok((v, next))
    }

    async fn post<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        self.send(self.http.post(format!("{}{path}", self.base)))
            .await
    }

    async fn send<T: serde::de::DeserializeOwned>(
        &self,
        req: reqwest::RequestBuilder,
    ) -> Result<T> {
        let req = req.bearer_auth(&self.token).build()?;
        let url = req.url().clone();
        let resp = self
            .http
            .execute(req)
            .await
            .with_context(|| format!("requesting {url}"))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("reading the answer of {url}"))?;
        if !status.is_success() {
            let msg = serde_json::from_slice::<ErrorBody>(&body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&body).into_owned());
            bail!("{url}: server answered {status}: {msg}");
        }
        serde_json::from_slice(&body).with_context(|| format!("parsing the answer of {url}"))
    }
}

/// The target of a `Link` header value's `rel="next"` entry, when it is a
/// path on the same server.
pub fn next_link(value: &str) -> Option<String> {
    value.split(',').find_map(|part| {
        let (target, params) = part.trim().split_once('>')?;
        let target = target.strip_prefix('<')?;
        let next = params
            .split(';')
            .any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        (next && target.starts_with('/')).then(|| target.to_owned())
    })
}

/// `q` as a URL query string.
fn serde_urlencoded_query(q: &MachineListQuery) -> Result<String> {
    let url = reqwest::Url::parse_with_params(
        "http://x/",
        [
            ("limit", q.limit.map(|l| l.to_string())),
            ("state", q.state.clone()),
            ("role", q.role.clone()),
            ("q", q.q.clone()),
            ("cursor", q.cursor.clone()),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?))),
    )?;
    Ok(url.query().unwrap_or_default().to_owned())
}

/// The `landfall machines` table.
pub fn machines_table(list: &[MachineSummary]) -> String {
    let mut rows = vec![[
        "MAC".to_owned(),
        "HOSTNAME".into(),
        "ROLE".into(),
        "STATE".into(),
        "LAST EVENT".into(),
        "UPDATED".into(),
    ]];
    for m in list {
        let last = match (&m.last_event, &m.error) {
            (Some(e), _) => format!(
                "{} {} {}",
                e.step,
                e.kind.as_str(),
                one_line(&e.message, 60)
            ),
            (None, Some(err)) => one_line(err, 60),
            (None, None) => "-".into(),
        };
        rows.push([
            esc(&m.mac).into_owned(),
            esc(m.hostname.as_deref().unwrap_or("-")).into_owned(),
            esc(m.role.as_deref().unwrap_or("-")).into_owned(),
            m.state.to_string(),
            last.trim_end().to_owned(),
            if m.updated_at.is_empty() {
                "-".into()
            } else {
                esc(&m.updated_at).into_owned()
            },
        ]);
    }
    columns(&rows)
}

/// Rows as left-aligned columns, two spaces apart, the last one unpadded.
fn columns<const N: usize>(rows: &[[String; N]]) -> String {
    let mut widths = [0usize; N];
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, (c, w)) in r.iter().zip(widths).enumerate() {
            if i + 1 == r.len() {
                line.push_str(c);
            } else {
                line.push_str(&format!("{c:<w$}  "));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The `landfall notifications` table: one delivery a line, what became of it.
pub fn notifications_table(list: &[Delivery]) -> String {
    if list.is_empty() {
        return "no webhook deliveries\n".to_owned();
    }
    let mut rows = vec![[
        "ID".to_owned(),
        "CHANGED".into(),
        "MACHINE".into(),
        "STATE".into(),
        "WEBHOOK".into(),
        "STATUS".into(),
    ]];
    for d in list {
        let tries = match d.attempts {
            1 => "1 try".to_owned(),
            n => format!("{n} tries"),
        };
        let last = || {
            d.last_error
                .as_deref()
                .map(|e| format!(", last: {}", one_line(e, 80)))
                .unwrap_or_default()
        };
        let status = match d.status {
            DeliveryStatus::Delivered => format!(
                "delivered {} ({}, {tries})",
                esc(d.delivered_at.as_deref().unwrap_or("-")),
                d.last_status.map_or("-".into(), |s| s.to_string())
            ),
            DeliveryStatus::Pending => format!(
                "pending: {tries}, next {}{}",
                esc(d.next_attempt_at.as_deref().unwrap_or("-")),
                last()
            ),
            other => format!("{other}: {tries}{}", last()),
        };
        rows.push([
            d.id.to_string(),
            esc(&d.created_at).into_owned(),
            esc(d.hostname.as_deref().unwrap_or(&d.mac)).into_owned(),
            d.state.to_string(),
            esc(&d.url).into_owned(),
            status,
        ]);
    }
    columns(&rows)
}

/// The whole text view of a machine (the CLI prints it piece by piece, the
/// attempts' events page by page). Everything an agent or client chose is
/// shown through [`esc`] or [`one_line`]: it can neither add a line nor
/// drive the terminal.
#[cfg(test)]
fn machine_text(d: &MachineDetail) -> String {
    let mut out = machine_head(d);
    for a in &d.attempts {
        out.push_str(&attempt_text(a));
    }
    out
}

/// `s` with control characters escaped ([`crate::text::escape_controls`]).
fn esc(s: &str) -> std::borrow::Cow<'_, str> {
    crate::text::escape_controls(s)
}

/// The machine and its hardware and verification, without the attempts.
fn machine_head(d: &MachineDetail) -> String {
    let s = &d.summary;
    let mut out = format!(
        "{} {}\n  role:    {}\n  state:   {}\n  updated: {}\n",
        esc(s.hostname.as_deref().unwrap_or("-")),
        esc(&s.mac),
        esc(s.role.as_deref().unwrap_or("-")),
        s.state,
        esc(&s.updated_at)
    );
    if let Some(e) = &s.error {
        out.push_str(&format!("  error:   {}\n", esc(e)));
    }
    if let Some(inv) = &d.inventory {
        out.push_str(&format!(
            "  hardware: {} {}, {} threads, {} MiB RAM, {} disks, {} NICs\n",
            esc(inv.dmi.vendor.as_deref().unwrap_or("?")),
            esc(inv.dmi.product.as_deref().unwrap_or("?")),
            inv.cpu.threads,
            inv.memory.total_bytes / (1024 * 1024),
            inv.disks.len(),
            inv.nics.len()
        ));
    }
    if let Some(v) = &d.verify {
        let failed = v.checks.iter().filter(|c| !c.ok).count();
        out.push_str(&format!(
            "  verify:  {} at {} ({} checks, {failed} failed)\n",
            if v.ok { "ok" } else { "FAILED" },
            esc(&v.received_at),
            v.checks.len()
        ));
        for c in &v.checks {
            out.push_str(&format!(
                "    {:<4} {:<16} {:>6} ms  {}\n",
                if c.ok { "ok" } else { "FAIL" },
                esc(&c.name),
                c.millis,
                one_line(&c.detail, 100)
            ));
        }
    }
    if let Some(id) = &d.identity {
        let facts = |f: &Option<landfall_proto::admin::IdentityFacts>| match f {
            Some(f) => format!(
                "uuid {}, serial {}, disks [{}], MACs [{}]",
                f.system_uuid.as_deref().unwrap_or("-"),
                f.system_serial.as_deref().unwrap_or("-"),
                f.disk_serials.join(", "),
                f.macs.join(", ")
            ),
            None => "-".to_owned(),
        };
        out.push_str(&format!(
            "  identity pinned:    {}\n",
            one_line(&facts(&id.pinned), 300)
        ));
        if id.presented.is_some() {
            out.push_str(&format!(
                "  identity presented: {}\n",
                one_line(&facts(&id.presented), 300)
            ));
        }
    }
    out
}

/// An attempt's header and the events it carries.
fn attempt_text(a: &AttemptDetail) -> String {
    let mut out = format!(
        "attempt {} started {} (acked up to seq {})\n",
        esc(&a.attempt_id),
        esc(&a.started_at),
        a.acked_seq
    );
    if let Some(t) = &a.last_wait_at {
        out.push_str(&format!(
            "  installer last asked for an operator's answer at {}\n",
            esc(t)
        ));
    }
    if let Some(t) = &a.events_pruned_at {
        out.push_str(&format!(
            "  its events were deleted at {} (over for longer than server.event_retention)\n",
            esc(t)
        ));
    }
    for e in &a.events {
        out.push_str(&event_line(e));
    }
    out
}

fn event_line(e: &Event) -> String {
    format!(
        "  {:>4} {} {:<9} {:<8} {}\n",
        e.seq,
        one_line(&e.time, 40),
        e.step,
        e.kind.as_str(),
        one_line(&e.message, 100)
    )
}

/// `s` on one line, cut at `max` characters: line breaks and tabs are
/// spaces, every other control character is escaped.
fn one_line(s: &str, max: usize) -> String {
    let s: String = s
        .chars()
        .map(|c| {
            if matches!(c, '\n' | '\r' | '\t') {
                ' '
            } else {
                c
            }
        })
        .collect();
    let s = esc(&s).into_owned();
    if s.chars().count() > max {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::{Event, EventKind, MachineState, Step};

    #[test]
    fn server_option_takes_a_url_or_host_port() {
        assert_eq!(
            server_base("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(server_base("https://s.lan/").unwrap(), "https://s.lan");
        assert_eq!(server_base("[::1]:80").unwrap(), "http://[::1]:80");
        for bad in ["ftp://s.lan", "", "http://", "a b:1"] {
            let e = server_base(bad).unwrap_err().to_string();
            assert!(e.starts_with(&format!("--server {bad:?}")), "{e}");
        }
    }

    #[test]
    fn machine_text_shows_the_verify_result() {
        use landfall_proto::verify::{CheckResult, VerifySummary};
        let d = MachineDetail {
            summary: MachineSummary {
                mac: "52:54:00:00:00:01".into(),
                hostname: Some("ws-01".into()),
                role: None,
                state: MachineState::Degraded,
                error: None,
                last_event: None,
                updated_at: String::new(),
            },
            inventory: None,
            attempts: Vec::new(),
            verify: Some(VerifySummary {
                attempt_id: "a1".into(),
                received_at: "2026-12-03T07:00:00Z".into(),
                hostname: "ws-01".into(),
                ok: false,
                checks: vec![
                    CheckResult {
                        name: "ssh".into(),
                        ok: true,
                        detail: "SSH-2.0-OpenSSH_9.2p1".into(),
                        millis: 12,
                    },
                    CheckResult {
                        name: "smb-home".into(),
                        ok: false,
                        detail: "NT_STATUS_LOGON_FAILURE".into(),
                        millis: 340,
                    },
                ],
            }),
            identity: None,
        };
        let t = machine_text(&d);
        assert!(
            t.contains("  verify:  FAILED at 2026-12-03T07:00:00Z (2 checks, 1 failed)\n"),
            "{t}"
        );
        assert!(t.contains("ok   ssh"), "{t}");
        assert!(t.contains("FAIL smb-home"), "{t}");
        assert!(t.contains("NT_STATUS_LOGON_FAILURE"), "{t}");
    }

    #[test]
    fn retry_text_says_who_runs_it_or_what_to_do() {
        let mut r = RetryResponse {
            machine: MachineSummary {
                mac: "52:54:00:00:00:01".into(),
                hostname: Some("ws-01".into()),
                role: None,
                state: MachineState::RetryRequested,
                error: None,
                last_event: None,
                updated_at: String::new(),
            },
            installer: landfall_proto::admin::InstallerWait {
                waiting: true,
                last_wait_at: Some("2026-12-03T07:00:00Z".into()),
            },
        };
        let t = retry_text(&r);
        assert!(t.contains("the waiting installer runs again"), "{t}");
        r.installer.waiting = false;
        let t = retry_text(&r);
        assert!(t.contains("no installer is waiting"), "{t}");
        assert!(
            t.contains("last asked for an answer at 2026-12-03T07:00:00Z"),
            "{t}"
        );
        assert!(t.contains("`landfall reinstall ws-01`"), "{t}");
        r.installer.last_wait_at = None;
        assert!(retry_text(&r).contains("never asked"));
    }

    #[test]
    fn notifications_say_what_became_of_each_delivery() {
        let d = |id, status, attempts, err: Option<&str>| Delivery {
            id,
            change_id: 3,
            url: "https://hooks.lan/landfall".into(),
            mac: "52:54:00:00:00:01".into(),
            hostname: Some("ws-01".into()),
            state: MachineState::Failed,
            created_at: "2026-12-07T08:00:00Z".into(),
            status,
            attempts,
            next_attempt_at: (status == DeliveryStatus::Pending)
                .then(|| "2026-12-07T08:00:04Z".into()),
            delivered_at: (status == DeliveryStatus::Delivered)
                .then(|| "2026-12-07T08:00:01Z".into()),
            last_status: (status == DeliveryStatus::Delivered).then_some(204),
            last_error: err.map(str::to_owned),
        };
        let t = notifications_table(&[
            d(
                3,
                DeliveryStatus::Failed,
                57,
                Some("the receiver answered 500"),
            ),
            d(2, DeliveryStatus::Pending, 2, Some("cannot connect\x1b[2J")),
            d(1, DeliveryStatus::Delivered, 1, None),
        ]);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("ID  CHANGED"), "{t}");
        assert!(
            lines[1].ends_with("failed: 57 tries, last: the receiver answered 500"),
            "{t}"
        );
        assert!(
            lines[2].contains("pending: 2 tries, next 2026-12-07T08:00:04Z, last: cannot connect"),
            "{t}"
        );
        assert!(!t.contains('\x1b'), "control characters are escaped: {t}");
        assert!(
            lines[3].ends_with("delivered 2026-12-07T08:00:01Z (204, 1 try)"),
            "{t}"
        );
        assert!(lines[3].contains("ws-01"), "{t}");
        assert_eq!(notifications_table(&[]), "no webhook deliveries\n");
    }

    #[test]
    fn table_has_the_columns_and_last_event() {
        let list = vec![MachineSummary {
            mac: "52:54:00:00:00:01".into(),
            hostname: Some("ws-01".into()),
            role: Some("workstation".into()),
            state: MachineState::Installing,
            error: None,
            last_event: Some(Event {
                seq: 4,
                time: "2026-01-01T00:00:00Z".into(),
                step: Step::Disks,
                kind: EventKind::Progress,
                progress: Some(0.5),
                message: "writing GPT\non vda".into(),
                data: None,
            }),
            updated_at: "2026-01-01T00:00:01Z".into(),
        }];
        let t = machines_table(&list);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("MAC"));
        for col in ["HOSTNAME", "ROLE", "STATE", "LAST EVENT", "UPDATED"] {
            assert!(lines[0].contains(col), "{t}");
        }
        assert!(
            lines[1].contains("disks progress writing GPT on vda"),
            "{t}"
        );
        assert!(lines[1].contains("installing"));
    }

    #[test]
    fn cli_parses_documented_flags() {
        let c = Cli::try_parse_from([
            "landfall",
            "serve",
            "--config",
            "x.toml",
            "--data",
            "/d",
            "--listen",
            "127.0.0.1:0",
            "--artifacts",
            "/a",
            "--check-config",
        ])
        .unwrap();
        let Command::Serve(a) = c.command else {
            panic!("not serve")
        };
        assert!(a.check_config);
        assert_eq!(a.listen.unwrap().port(), 0);
        let c = Cli::try_parse_from(["landfall", "machine", "ws-01", "--json"]).unwrap();
        assert!(matches!(c.command, Command::Machine { json: true, .. }));
        let c =
            Cli::try_parse_from(["landfall", "retry", "ws-01", "--server", "http://s:1"]).unwrap();
        assert!(
            matches!(&c.command, Command::Retry { machine, client } if machine == "ws-01" && client.server == "http://s:1")
        );
        assert!(path_segment("../x").is_err());
        assert!(path_segment("52:54:00:00:00:01").is_ok());
    }
}
