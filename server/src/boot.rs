//! The boot decision (install | local | hold) and the iPXE scripts.
//!
//! Everything interpolated into a script is validated first: hostnames are
//! RFC 1123, roles `[a-z0-9-]`, the base URL comes from the validated config or
//! a checked Host header, kernel args were checked for control characters at
//! config load, tokens are hex.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use landfall_proto::names::{check_hostname, check_simple_name, normalize_mac};
use landfall_proto::{Assignment, BootAction, MachineState};

use crate::app::{new_token, token_hash, AppState, Peer};
use crate::store::DiscoveredCap;
use crate::text::Untrusted;

/// The iPXE loop back to this server, with iPXE's own variables for the machine.
const CHAIN_QUERY: &str = "boot.ipxe?mac=${net0/mac}&arch=${buildarch}&platform=${platform}";

/// Seconds a held machine waits before asking again.
pub const HOLD_SLEEP: u32 = 30;

/// What a machine in `state` boots.
pub fn decide(state: MachineState) -> BootAction {
    match state {
        MachineState::Expected
        | MachineState::Assigned
        | MachineState::ReinstallRequested
        | MachineState::Installing => BootAction::Install,
        MachineState::Installed | MachineState::Ready | MachineState::Degraded => BootAction::Local,
        MachineState::Discovered
        | MachineState::Failed
        | MachineState::RetryRequested
        | MachineState::Compromised
        | MachineState::IdentityHeld
        | MachineState::Unknown => BootAction::Hold,
    }
}

pub use crate::app::base_from_host;

/// The install script, or why a value failed validation (the caller holds instead).
/// `base` is where iPXE fetches the kernel and initrd; `server` is what the
/// agent is told (`landfall.server=`: the https URL when TLS is on).
pub fn install_script(
    base: &str,
    server: &str,
    a: &Assignment,
    token: &str,
    kernel_args: &str,
) -> Result<String, String> {
    install_script_from(base, server, "", a, token, kernel_args)
}

/// [`install_script`] with the image in `ARTIFACTS/{dir}` (`""`, `"x86_64/"`
/// or `"arm64/"`: [`crate::artifact_dir::image_dir`]).
pub fn install_script_from(
    base: &str,
    server: &str,
    dir: &str,
    a: &Assignment,
    token: &str,
    kernel_args: &str,
) -> Result<String, String> {
    check_hostname(&a.hostname).map_err(|e| e.to_string())?;
    check_simple_name("role", &a.role).map_err(|e| e.to_string())?;
    if !token.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err("boot token is not alphanumeric".into());
    }
    let mut kernel = format!(
        "kernel {base}/artifacts/{dir}vmlinuz initrd=initrd landfall.server={server} landfall.token={token}"
    );
    if !kernel_args.is_empty() {
        kernel.push(' ');
        kernel.push_str(kernel_args);
    }
    Ok(format!(
        "#!ipxe\n\
         echo landfall: installing {host} (role {role})\n\
         {kernel}\n\
         initrd {base}/artifacts/{dir}initrd\n\
         boot\n",
        host = a.hostname,
        role = a.role,
    ))
}

/// The installer image's own kernel arguments: `ARTIFACTS/cmdline` when the
/// image ships one (NixOS netboot: `init=/nix/store/...-nixos-system/init` and
/// its `boot.kernelParams`), read at each boot so a new image needs no restart.
/// They go before `server.kernel_args`, which can therefore override them.
pub fn image_cmdline(artifacts: &std::path::Path) -> Result<String, String> {
    use std::io::Read;
    let path = artifacts.join("cmdline");
    let mut text = String::new();
    // A regular file only, as every artifact: no symlink out of the
    // directory, no FIFO to hang the boot script on.
    match crate::artifact_dir::open_regular(artifacts, "cmdline") {
        Ok(None) => return Ok(String::new()),
        Ok(Some((f, _))) => f
            .take(64 * 1024)
            .read_to_string(&mut text)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let line = text.trim();
    if line.chars().any(char::is_control) {
        return Err(format!(
            "{} must be one line of kernel arguments (it has a control character)",
            path.display()
        ));
    }
    Ok(line.to_owned())
}

/// Boot from the local disk: `exit` hands back to the firmware's next boot device.
pub fn local_script(hostname: Option<&str>) -> String {
    let name = hostname
        .filter(|h| check_hostname(h).is_ok())
        .unwrap_or("this machine");
    format!("#!ipxe\necho landfall: {name} is installed, booting from local disk\nexit\n")
}

/// Characters of the reason a hold prints at most; the fix is never cut.
const HOLD_WHY_MAX: usize = 480;

/// Print why (one line, which the console wraps, cut at [`HOLD_WHY_MAX`]
/// characters) and, on its own line and whole, what to do about it; wait,
/// ask again.
pub fn hold_script(base: &str, why: &str, fix: Option<&str>) -> String {
    let mut why = sanitize(why);
    if why.chars().count() > HOLD_WHY_MAX {
        why = why.chars().take(HOLD_WHY_MAX).collect();
        why.push_str(" ... (cut; the whole text: landfall machine)");
    }
    let fix = fix.map(|f| format!("echo landfall: {}\n", sanitize(f)));
    format!(
        "#!ipxe\n\
         echo landfall: holding: {why}\n\
         {}\
         echo landfall: asking again in {HOLD_SLEEP} seconds\n\
         sleep {HOLD_SLEEP}\n\
         chain {base}/{CHAIN_QUERY}\n",
        fix.unwrap_or_default()
    )
}

/// How long `boot.ipxe` waits for the store before it answers [`busy_script`].
pub const STORE_WAIT: std::time::Duration = std::time::Duration::from_millis(1000);

/// Seconds a machine waits before asking again when the server was busy.
pub const BUSY_SLEEP: u32 = 5;

/// The answer when the store does not answer in time: wait briefly, ask again.
pub fn busy_script(base: &str) -> String {
    format!(
        "#!ipxe
         echo landfall: server busy, asking again in {BUSY_SLEEP} seconds
         sleep {BUSY_SLEEP}
         chain {base}/{CHAIN_QUERY}
"
    )
}

/// A hold script when there is no base URL to chain to: print why and stop.
pub fn stop_script(why: &str) -> String {
    format!("#!ipxe\necho landfall: {}\nexit 1\n", sanitize(why))
}

/// Chain back here with the MAC, architecture and platform filled in by iPXE.
pub fn redirect_script(base: &str) -> String {
    format!("#!ipxe\nchain {base}/{CHAIN_QUERY}\n")
}

/// The generic script to embed in an iPXE build: DHCP, then chain here.
pub fn chain_script(base: &str) -> String {
    format!("#!ipxe\ndhcp\nchain {base}/{CHAIN_QUERY}\n")
}

/// Keep a message to harmless characters (iPXE expands `${...}`); line
/// breaks become spaces (a hold wraps the text itself).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || " .,:;-_()/'=@+[]".contains(c) {
                c
            } else if c.is_whitespace() {
                ' '
            } else {
                '?'
            }
        })
        .collect()
}

/// `GET /boot.ipxe?mac=..&arch=..&platform=..`: always an iPXE script, never a 5xx.
pub async fn boot_ipxe(
    State(app): State<AppState>,
    Peer(client): Peer,
    method: Method,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    if method == Method::HEAD {
        // A script mints a boot token (and revokes the machine's unused one)
        // and records the boot: HEAD must change nothing, so it gets the
        // headers of a script and no decision at all.
        return script(StatusCode::OK, String::new());
    }
    let Some(base) = app.base_url(&headers) else {
        return script(
            StatusCode::BAD_REQUEST,
            stop_script("the Host header is missing or invalid and server.public_url is not set"),
        );
    };
    let q = query.map(|Query(q)| q).unwrap_or_default();
    let Some(raw_mac) = q.get("mac").map(String::as_str) else {
        // The plain bootfile a DHCP server hands out (`.../boot.ipxe`): ask again
        // at once with iPXE's own MAC. An empty or bad `mac=` holds instead, so
        // this can never loop without a pause.
        return script(StatusCode::OK, redirect_script(&base));
    };
    let Some(mac) = normalize_mac(raw_mac) else {
        tracing::warn!(mac = %Untrusted(raw_mac), "boot.ipxe without a valid MAC");
        return script(
            StatusCode::OK,
            hold_script(
                &base,
                "no valid MAC address in the request",
                Some("the boot script must ask for boot.ipxe?mac=aa:bb:cc:dd:ee:ff"),
            ),
        );
    };
    let arch = q.get("arch").map(String::as_str).filter(|v| plain(v));
    let platform = q.get("platform").map(String::as_str).filter(|v| plain(v));
    let decided = tokio::time::timeout(
        STORE_WAIT,
        decide_and_render(&app, &base, &mac, arch, platform, &client),
    )
    .await;
    let Ok(decided) = decided else {
        // The database is stalled (locked by another process, slow disk):
        // the machine asks again soon rather than hanging on us.
        tracing::warn!(%mac, "boot.ipxe: the store did not answer within {STORE_WAIT:?}; answered busy");
        return script(StatusCode::OK, busy_script(&base));
    };
    match decided {
        Ok(s) => script(StatusCode::OK, s),
        Err(e) => {
            tracing::error!(%mac, "boot.ipxe: {e:#}");
            script(
                StatusCode::OK,
                hold_script(&base, "server error", Some("see the landfall server log")),
            )
        }
    }
}

/// What the configuration assigns to `mac` now: its `[[machines]]` entry,
/// else the role and hostname of an earlier auto-enrolment (if the role still
/// exists), else the enrolment policy. `None`: nothing (hold as discovered).
pub async fn current_assignment(app: &AppState, mac: &str) -> anyhow::Result<Option<Assignment>> {
    if app.settings.machines.contains_key(mac) {
        return Ok(app.settings.assignment_for(mac));
    }
    let (a, mac) = (app.clone(), mac.to_owned());
    app.store
        .read(move |tx| assignment_in(&a.settings, tx, &mac))
        .await
}

/// [`current_assignment`] inside a store transaction.
fn assignment_in(
    settings: &crate::config::Settings,
    tx: &mut crate::store::Tx<'_>,
    mac: &str,
) -> anyhow::Result<Option<Assignment>> {
    Ok(if settings.machines.contains_key(mac) {
        settings.assignment_for(mac)
    } else {
        // Known from an earlier auto-enrolment (keeps its hostname), else the enrol policy.
        let known = tx
            .machine(mac)?
            .and_then(|r| Some((r.hostname?, r.role?)))
            .and_then(|(h, r)| settings.role_assignment_checked(&r, &h));
        if known.is_some() {
            return Ok(known);
        }
        let tx = std::cell::RefCell::new(tx);
        settings.enrolment_for(mac, &|name| match tx.borrow_mut().hostname_owner(name) {
            Ok(owner) => owner.is_some_and(|o| o != mac),
            // Unsure: take a longer name rather than risk a clash.
            Err(e) => {
                tracing::warn!(%mac, "looking up hostname {name}: {e:#}");
                true
            }
        })
    })
}

async fn decide_and_render(
    app: &AppState,
    base: &str,
    mac: &str,
    arch: Option<&str>,
    platform: Option<&str>,
    client: &str,
) -> anyhow::Result<String> {
    let settings = &app.settings;
    let now = crate::store::now();
    let row = {
        // An auto-enrolled name is chosen free and stored in one write
        // transaction (one writer at a time), so two new machines booting
        // at once cannot both take it.
        let cap = DiscoveredCap {
            max: settings.limits.max_discovered,
            per_minute: settings.limits.max_discovered_per_minute,
        };
        let a = app.clone();
        let mac = mac.to_owned();
        let (arch, platform) = (arch.map(str::to_owned), platform.map(str::to_owned));
        app.store
            .write(move |tx| {
                let assignment = assignment_in(&a.settings, tx, &mac)?;
                tx.record_boot(
                    &mac,
                    assignment.as_ref(),
                    arch.as_deref(),
                    platform.as_deref(),
                    now,
                    cap,
                )
            })
            .await?
    };
    let Some(row) = row else {
        // Once a minute at most: a flood must not flood the log instead.
        static LAST_WARNED: AtomicI64 = AtomicI64::new(0);
        let last = LAST_WARNED.load(Ordering::Relaxed);
        if now - last >= 60
            && LAST_WARNED
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            tracing::warn!(
                %mac,
                "boot.ipxe: unknown machines not recorded: more than server.max_discovered_per_minute ({}) new ones in the last minute (said once a minute)",
                settings.limits.max_discovered_per_minute
            );
        }
        return Ok(hold_script(
            base,
            &format!("unknown machine {mac}: too many new machines in the last minute"),
            Some("add it to [[machines]] in landfall.toml"),
        ));
    };
    let action = decide(row.state);
    tracing::info!(%mac, hostname = row.hostname.as_deref().unwrap_or("-"), state = %row.state, ?action, "boot.ipxe");
    Ok(match action {
        BootAction::Install => {
            let Some(a) = row.assignment() else {
                return Ok(hold_script(
                    base,
                    &format!("{mac} has no hostname and role"),
                    Some("list it in [[machines]] of landfall.toml"),
                ));
            };
            let dir = match crate::artifact_dir::image_dir(&app.artifacts, arch) {
                Ok(d) => d,
                Err((why, fix)) => return Ok(hold_script(base, &why, Some(&fix))),
            };
            let args = match image_cmdline(&app.artifacts.join(dir)) {
                Ok(image) => [image.as_str(), settings.kernel_args.as_str()]
                    .iter()
                    .filter(|s| !s.is_empty())
                    .copied()
                    .collect::<Vec<_>>()
                    .join(" "),
                Err(e) => return Ok(hold_script(base, &e, None)),
            };
            let Some(server) = app.agent_base(base) else {
                return Ok(hold_script(
                    base,
                    "no https URL for the agent",
                    Some("set server.public_tls_url in landfall.toml"),
                ));
            };
            let token = new_token()?;
            let s = match install_script_from(base, &server, dir, &a, &token, &args) {
                Ok(s) => s,
                Err(e) => return Ok(hold_script(base, &format!("{mac}: {e}"), None)),
            };
            let (m, hash, ttl) = (mac.to_owned(), token_hash(&token), settings.boot_token_ttl);
            app.store
                .write(move |tx| tx.add_boot_token(&m, &hash, now, ttl))
                .await?;
            if row.state == MachineState::Installing {
                // A reboot mid-install, or someone asking with this MAC: the
                // hello decides (a new attempt, or an alarm while the current
                // one is alive; docs/security.md).
                tracing::warn!(%mac, %client, "boot token minted for a machine that is installing");
            } else {
                tracing::info!(%mac, %client, state = %row.state, "boot token minted");
            }
            s
        }
        BootAction::Local => local_script(row.hostname.as_deref()),
        BootAction::Hold | BootAction::Unknown => {
            let (why, fix) = match row.state {
                MachineState::Discovered => (
                    format!("unknown machine {mac}"),
                    "add it to [[machines]] in landfall.toml".to_owned(),
                ),
                MachineState::Failed => (
                    format!(
                        "install of {mac} failed: {}",
                        row.error.as_deref().unwrap_or("no error recorded")
                    ),
                    format!("fix it, then run: landfall reinstall {mac}"),
                ),
                // The installer that failed is gone (the machine rebooted):
                // nobody will pick the retry up.
                MachineState::RetryRequested => (
                    format!(
                        "a retry of {mac} was requested, but its installer is no longer running"
                    ),
                    format!("run: landfall reinstall {mac}"),
                ),
                MachineState::IdentityHeld => (
                    format!("{mac} presented an identity other than the one pinned at its first install"),
                    format!("check it (landfall machine {mac}), then run: landfall approve {mac}"),
                ),
                MachineState::Compromised => (
                    format!("security alarm on {mac}"),
                    format!("investigate, then run: landfall reinstall {mac}"),
                ),
                s => (format!("{mac} is in state {s}"), String::new()),
            };
            hold_script(base, &why, Some(fix.as_str()).filter(|f| !f.is_empty()))
        }
    })
}

/// `GET /chain.ipxe`: the generic script to embed in an iPXE build.
pub async fn chain_ipxe(State(app): State<AppState>, headers: HeaderMap) -> Response {
    match app.base_url(&headers) {
        Some(base) => script(StatusCode::OK, chain_script(&base)),
        None => script(
            StatusCode::BAD_REQUEST,
            stop_script("the Host header is missing or invalid and server.public_url is not set"),
        ),
    }
}

fn script(status: StatusCode, body: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/plain; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response()
}

/// An iPXE `${buildarch}` / `${platform}` value: short and plain.
fn plain(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 32
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use landfall_proto::WipePolicy;

    fn assignment(host: &str, role: &str) -> Assignment {
        Assignment::new(host.into(), role.into(), None, WipePolicy::Never)
    }

    #[test]
    fn decisions_per_state() {
        use MachineState::*;
        for s in [Expected, Assigned, ReinstallRequested, Installing] {
            assert_eq!(decide(s), BootAction::Install, "{s}");
        }
        for s in [Installed, Ready, Degraded] {
            assert_eq!(decide(s), BootAction::Local, "{s}");
        }
        for s in [
            Discovered,
            Failed,
            RetryRequested,
            Compromised,
            IdentityHeld,
            Unknown,
        ] {
            assert_eq!(decide(s), BootAction::Hold, "{s}");
        }
    }

    #[test]
    fn install_script_has_the_exact_shape() {
        let s = install_script(
            "http://10.0.0.1:8080",
            "https://10.0.0.1:8443",
            &assignment("ws-01", "workstation"),
            "abc123",
            "console=ttyS0,115200",
        )
        .unwrap();
        assert_eq!(
            s,
            "#!ipxe\n\
             echo landfall: installing ws-01 (role workstation)\n\
             kernel http://10.0.0.1:8080/artifacts/vmlinuz initrd=initrd landfall.server=https://10.0.0.1:8443 landfall.token=abc123 console=ttyS0,115200\n\
             initrd http://10.0.0.1:8080/artifacts/initrd\n\
             boot\n"
        );
    }

    #[test]
    fn bad_names_never_reach_a_script() {
        assert!(install_script(
            "http://x",
            "http://x",
            &assignment("a\nshell", "r"),
            "t",
            ""
        )
        .is_err());
        assert!(
            install_script("http://x", "http://x", &assignment("a", "r ${x}"), "t", "").is_err()
        );
        assert!(install_script("http://x", "http://x", &assignment("a", "r"), "t\nx", "").is_err());
        assert_eq!(
            local_script(Some("x\nshell")),
            "#!ipxe\necho landfall: this machine is installed, booting from local disk\nexit\n"
        );
        let h = hold_script("http://x", "mac ${evil}\nshell", None);
        assert_eq!(h.lines().count(), 5, "{h}");
        assert!(!h.contains("${evil}"));
    }

    /// The echo lines of a script, without `echo `.
    fn echoed(script: &str) -> Vec<&str> {
        script
            .lines()
            .filter_map(|l| l.strip_prefix("echo "))
            .collect()
    }

    #[test]
    fn a_hold_cuts_a_long_reason_and_never_the_fix() {
        let why = format!("install failed: {}", "nixos-install said no ".repeat(60));
        let fix = "fix it, then run: landfall reinstall 52:54:00:12:34:56";
        let h = hold_script("http://x", &why, Some(fix));
        let lines = echoed(&h);
        assert_eq!(lines.len(), 3, "{h}");
        // The reason is cut (saying where the whole text is), the fix is whole.
        assert!(lines[0].starts_with("landfall: holding: install failed: nixos-install said no"));
        assert!(
            lines[0].ends_with(" ... (cut; the whole text: landfall machine)"),
            "{h}"
        );
        assert!(lines[0].len() < HOLD_WHY_MAX + 100, "{h}");
        assert!(
            lines.contains(&"landfall: fix it, then run: landfall reinstall 52:54:00:12:34:56"),
            "{h}"
        );
        assert!(h.ends_with(&format!(
            "sleep {HOLD_SLEEP}\nchain http://x/{CHAIN_QUERY}\n"
        )));
    }

    #[test]
    fn a_hold_shows_config_names_as_written() {
        let h = hold_script(
            "http://x",
            "unknown machine 52:54:00:aa:bb:cc",
            Some("add it to [[machines]] in landfall.toml"),
        );
        assert_eq!(
            echoed(&h),
            [
                "landfall: holding: unknown machine 52:54:00:aa:bb:cc",
                "landfall: add it to [[machines]] in landfall.toml",
                "landfall: asking again in 30 seconds",
            ]
        );
        // A line break in a reason is a space, not a new (unechoed) line.
        let h = hold_script("http://x", "first\nsecond", None);
        assert_eq!(echoed(&h)[0], "landfall: holding: first second");
    }

    #[test]
    fn host_header_is_checked() {
        assert_eq!(
            base_from_host("10.0.0.1:8080").as_deref(),
            Some("http://10.0.0.1:8080")
        );
        assert_eq!(
            base_from_host("[::1]:80").as_deref(),
            Some("http://[::1]:80")
        );
        assert!(base_from_host("x/y").is_none());
        assert!(base_from_host("x y").is_none());
        assert!(base_from_host("").is_none());
    }
}
