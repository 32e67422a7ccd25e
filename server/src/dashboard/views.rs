//! The dashboard's HTML: maud templates, checked at compile time, every
//! value escaped. Pages are whole documents; the live parts (summary, step
//! panel, output lines) are fragments the SSE stream sends again.

use landfall_proto::admin::{AttemptDetail, IdentityFacts, MachineDetail};
use landfall_proto::inventory::Inventory;
use landfall_proto::{Event, MachineState};
use maud::{html, Markup, PreEscaped, DOCTYPE};

use super::auth::{Flash, Session};
use super::panel::{Failure, Panel, StepState};
use crate::config::Role;

/// The dashboard's root, as links are written (the router is nested here).
pub const ROOT: &str = "/ui";

/// What every page of a logged-in user needs.
pub struct Ctx<'a> {
    pub session: &'a Session,
}

impl Ctx<'_> {
    pub fn operator(&self) -> bool {
        self.session.role >= Role::Operator
    }
}

/// A machine's page address.
pub fn machine_url(mac: &str) -> String {
    format!("{ROOT}/machines/{mac}")
}

pub fn page(title: &str, ctx: Option<&Ctx<'_>>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · landfall" }
                link rel="stylesheet" href={ (ROOT) "/static/style.css" };
                script src={ (ROOT) "/static/live.js" } defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header.top {
                    nav aria-label="Main" {
                        a.brand href={ (ROOT) "/" } { "landfall" }
                        @if ctx.is_some() {
                            a href={ (ROOT) "/" } { "Fleet" }
                        }
                    }
                    @if let Some(c) = ctx {
                        form.logout method="post" action={ (ROOT) "/logout" } {
                            span.who { (c.session.user) " (" (c.session.role.as_str()) ")" }
                            input type="hidden" name="csrf" value=(c.session.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

pub fn flash(f: Option<&Flash>) -> Markup {
    html! {
        @if let Some(f) = f {
            p.flash.ok[f.ok].err[!f.ok] role="status" { (f.text) }
        }
    }
}

pub fn state_badge(s: MachineState) -> Markup {
    html! { span class={ "state s-" (s.as_str()) } { (s.as_str().replace('_', " ")) } }
}

/// "3m", "2h 5m", "4d 1h": how long ago `since` was.
pub fn ago(now: i64, since: i64) -> String {
    let s = (now - since).max(0);
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

pub fn progress_bar(fraction: f32, label: &str) -> Markup {
    let pct = (fraction.clamp(0.0, 1.0) * 100.0).round();
    html! {
        progress value=(format!("{:.3}", fraction.clamp(0.0, 1.0))) max="1" aria-label=(label) { (pct) "%" }
        span.pct { (pct) "%" }
    }
}

/// One line of an event's message, cut at `max` characters.
pub fn cut(s: &str, max: usize) -> String {
    let one: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one.chars().count() > max {
        let mut t: String = one.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    } else {
        one
    }
}

/// The head of a machine's page that the live stream replaces: the state,
/// how long in it, the error and failure, and the actions.
pub struct Head<'a> {
    pub mac: &'a str,
    pub hostname: Option<&'a str>,
    pub state: MachineState,
    pub error: Option<&'a str>,
    pub state_since: Option<i64>,
    pub now: i64,
    /// Stored (not only expected) with a hostname and role: reinstallable.
    pub assigned: bool,
    pub stored: bool,
}

/// `operator`: the viewer may act (the actions are linked).
pub fn summary(operator: bool, h: &Head<'_>, failure: Option<&Failure>) -> Markup {
    let name = h.hostname.unwrap_or(h.mac);
    html! {
        p.statusline {
            (state_badge(h.state))
            @if let Some(t) = h.state_since {
                " " span.since { "for " (ago(h.now, t)) }
            }
        }
        @let failed = matches!(h.state, MachineState::Failed | MachineState::Compromised | MachineState::RetryRequested);
        @match (failure.filter(|_| failed), h.error) {
            (Some(f), _) => (failure_box(name, f)),
            (None, Some(e)) => p.error { strong { "Error: " } (e) },
            (None, None) => {},
        }
        @if h.stored {
            @if operator {
                nav.actions aria-label="Actions" {
                    @if h.state == MachineState::Failed {
                        a.button href={ (machine_url(h.mac)) "/retry" } { "Retry " (name) "…" }
                    }
                    @if h.state == MachineState::IdentityHeld {
                        a.button href={ (machine_url(h.mac)) "/approve" } { "Approve " (name) "…" }
                    }
                    @if h.assigned {
                        a.button.danger href={ (machine_url(h.mac)) "/reinstall" } { "Reinstall " (name) "…" }
                    }
                }
            } @else {
                p.note { "Logged in as a viewer: retry, reinstall and approve need an operator." }
            }
        }
    }
}

fn failure_box(name: &str, f: &Failure) -> Markup {
    let d = &f.data;
    html! {
        section.failure aria-labelledby="failure-h" {
            h3 #failure-h {
                "Failed"
                @if let Some(s) = &f.step { " at step " (s) }
                @if let Some(c) = d.class { ": " (c.as_str()) " failure" }
            }
            @if !f.message.is_empty() { p { (f.message) } }
            @if let Some(e) = &d.error {
                @if *e != f.message { p { (e) } }
            }
            @if let Some(hint) = d.hint.as_deref().or(d.class.map(|c| c.hint())) {
                p.hint { strong { "What to do: " } (hint.replace("HOST", name)) }
            }
            @if let Some(c) = &d.command {
                p { "Command: " code { (c) }
                    @if let Some(x) = d.exit_code { " (exit code " (x) ")" } }
            }
            @if !d.last_lines.is_empty() {
                p { "Last lines of its output:" }
                pre.lastlines { @for l in &d.last_lines { (l) "\n" } }
            }
        }
    }
}

pub fn panel(p: &Panel) -> Markup {
    let label = match p.ended {
        Some(true) => "Install finished".to_owned(),
        Some(false) => "Install failed".to_owned(),
        None => match p.current() {
            Some(s) => format!("Running: {}", s.title),
            None if p.attempt.is_none() => "No install attempt yet".to_owned(),
            None => "Waiting".to_owned(),
        },
    };
    html! {
        p.overall { strong { (label) } " " (progress_bar(p.fraction(), "Whole install")) }
        ol.steps {
            @for s in &p.steps {
                li class={ "step st-" (s.state.as_str()) } {
                    span.mark aria-hidden="true" { (match s.state {
                        StepState::Pending => "○", StepState::Running => "▶",
                        StepState::Done => "✓", StepState::Failed => "✗", StepState::Skipped => "–",
                    }) }
                    " "
                    span.title { (s.title) }
                    " "
                    span.stext { "(" (s.state.as_str()) ")" }
                    @if let (StepState::Running, Some(f)) = (s.state, s.progress) {
                        " " (progress_bar(f, s.title))
                    }
                    @if !s.message.is_empty() {
                        br;
                        span.msg { (cut(&s.message, 200)) }
                    }
                }
            }
        }
        @if p.ended.is_none() && !p.last_message.is_empty() {
            p.last { "Last: " (cut(&p.last_message, 200)) }
        }
    }
}

/// Output lines, each its own element (the stream appends more).
pub fn output_lines<'a>(lines: impl IntoIterator<Item = &'a Event>) -> Markup {
    html! {
        @for e in lines {
            div.line { span.seq { (e.seq) } " " (e.message) }
        }
    }
}

pub fn inventory(inv: &Inventory) -> Markup {
    let gib = |b: u64| format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64);
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".into());
    html! {
        dl.facts {
            dt { "CPU" } dd { (opt(&inv.cpu.model)) ", " (inv.cpu.cores) " cores, " (inv.cpu.threads) " threads" }
            dt { "Memory" } dd { (gib(inv.memory.total_bytes)) }
            dt { "Firmware" } dd {
                (format!("{:?}", inv.firmware.mode).to_lowercase())
                @match inv.firmware.secure_boot { Some(true) => ", Secure Boot on", Some(false) => ", Secure Boot off", None => "" }
            }
            dt { "System" } dd { (opt(&inv.dmi.vendor)) " " (opt(&inv.dmi.product)) }
            dt { "Serial" } dd { (opt(&inv.dmi.serial)) }
            dt { "UUID" } dd { (opt(&inv.dmi.uuid)) }
            @if let Some(k) = &inv.kernel { dt { "Installer kernel" } dd { (k) } }
        }
        h3 { "Disks" }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "Size" } th scope="col" { "Model" }
                    th scope="col" { "Serial" } th scope="col" { "By-id" } th scope="col" { "Kind" } } }
                tbody {
                    @for d in &inv.disks {
                        tr {
                            td { (d.path) }
                            td { (gib(d.size_bytes)) }
                            td { (opt(&d.model)) }
                            td { (opt(&d.serial)) }
                            td.wrap { (opt(&d.by_id)) }
                            td { (format!("{:?}", d.transport).to_lowercase())
                                 @if d.rotational { ", rotational" } @if d.removable { ", removable" } }
                        }
                    }
                }
            }
        }
        h3 { "Network interfaces" }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Name" } th scope="col" { "MAC" } th scope="col" { "Driver" }
                    th scope="col" { "Link" } th scope="col" { "Addresses" } } }
                tbody {
                    @for n in &inv.nics {
                        tr {
                            td { (n.name) }
                            td { code { (n.mac) } }
                            td { (opt(&n.driver)) }
                            td { @if n.link_up { "up" @if let Some(s) = n.speed_mbps { " " (s) " Mb/s" } } @else { "down" } }
                            td { (n.addresses.join(", ")) }
                        }
                    }
                }
            }
        }
    }
}

pub fn identity(pinned: &Option<IdentityFacts>, presented: &Option<IdentityFacts>) -> Markup {
    let row = |label: &str, f: &Option<IdentityFacts>| {
        html! {
            tr {
                th scope="row" { (label) }
                @if let Some(f) = f {
                    td { (f.system_uuid.as_deref().unwrap_or("-")) }
                    td { (f.system_serial.as_deref().unwrap_or("-")) }
                    td { (f.disk_serials.join(", ")) }
                    td { (f.macs.join(", ")) }
                } @else { td colspan="4" { "-" } }
            }
        }
    };
    html! {
        div.scroll {
            table {
                thead { tr { td {} th scope="col" { "System UUID" } th scope="col" { "Serial" }
                    th scope="col" { "Disk serials" } th scope="col" { "NIC MACs" } } }
                tbody { (row("Pinned", pinned)) @if presented.is_some() { (row("Presented", presented)) } }
            }
        }
    }
}

pub fn verify(v: &landfall_proto::verify::VerifySummary) -> Markup {
    html! {
        p { "First boot reported " @if v.ok { strong { "all checks passed" } } @else { strong.bad { "failed checks" } }
            " at " (v.received_at) " (attempt " code { (v.attempt_id) } ")." }
        div.scroll {
            table {
                thead { tr { th scope="col" { "Check" } th scope="col" { "Result" } th scope="col" { "Time" } th scope="col" { "Detail" } } }
                tbody {
                    @for c in &v.checks {
                        tr {
                            td { (c.name) }
                            td { @if c.ok { span.okmark { "ok" } } @else { span.bad { "FAILED" } } }
                            td { (c.millis) " ms" }
                            td.wrap { (c.detail) }
                        }
                    }
                }
            }
        }
    }
}

/// The attempts, newest first, and one page of the selected one's events.
pub fn attempts(
    mac: &str,
    list: &[AttemptDetail],
    selected: Option<&AttemptDetail>,
    after: u64,
) -> Markup {
    html! {
        @if list.is_empty() { p { "No install attempt yet." } }
        ul.attempts {
            @for a in list.iter().rev() {
                li {
                    @if selected.is_some_and(|s| s.attempt_id == a.attempt_id) {
                        strong { "Attempt " code { (a.attempt_id) } }
                    } @else {
                        a href={ (machine_url(mac)) "?attempt=" (a.attempt_id) "#attempts" } { "Attempt " code { (a.attempt_id) } }
                    }
                    " started " (a.started_at) ", events acknowledged up to " (a.acked_seq)
                    @if let Some(t) = &a.last_wait_at { ", installer last waited for an operator at " (t) }
                    @if let Some(t) = &a.events_pruned_at { ", events deleted at " (t) " (older than server.event_retention)" }
                }
            }
        }
        @if let Some(s) = selected.filter(|s| s.events_pruned_at.is_some()) {
            h3 { "Events of attempt " code { (s.attempt_id) } }
            p.pruned { "This attempt's events were deleted at " (s.events_pruned_at.as_deref().unwrap_or_default())
                ": it was over for longer than server.event_retention." }
        }
        @if let Some(s) = selected.filter(|s| s.events_pruned_at.is_none()) {
            h3 { "Events of attempt " code { (s.attempt_id) }
                @if after > 0 { " after #" (after) } }
            div.scroll {
                table.events {
                    thead { tr { th scope="col" { "#" } th scope="col" { "Time" } th scope="col" { "Step" }
                        th scope="col" { "Kind" } th scope="col" { "Message" } } }
                    tbody {
                        @for e in &s.events {
                            tr class={ "k-" (e.kind.as_str()) } {
                                td { (e.seq) } td { (e.time) } td { (e.step.as_str()) } td { (e.kind.as_str()) }
                                td.wrap { (cut(&e.message, 300)) }
                            }
                        }
                    }
                }
            }
            nav.pager aria-label="Events pages" {
                @if after > 0 {
                    a href={ (machine_url(mac)) "?attempt=" (s.attempt_id) "#attempts" } { "First page" }
                }
                @if s.more_events {
                    @if let Some(last) = s.events.last() {
                        a href={ (machine_url(mac)) "?attempt=" (s.attempt_id) "&after=" (last.seq) "#attempts" } { "Next page" }
                    }
                }
            }
        }
    }
}

/// The whole machine page.
pub struct MachinePage<'a> {
    pub head: Head<'a>,
    pub detail: &'a MachineDetail,
    pub panel: &'a Panel,
    pub output: Vec<&'a Event>,
    pub selected: Option<&'a AttemptDetail>,
    pub after: u64,
    pub flash: Option<Flash>,
}

pub fn machine(ctx: &Ctx<'_>, p: &MachinePage<'_>) -> Markup {
    let s = &p.detail.summary;
    let name = s.hostname.as_deref().unwrap_or(&s.mac);
    let live = format!("{}/live", machine_url(&s.mac));
    html! {
        div data-live=[p.head.stored.then_some(live)] {
            h1 { (name) }
            p.sub {
                code { (s.mac) }
                @if let Some(r) = &s.role { " · role " strong { (r) } }
                " · " span #live-status role="status" { "not live (reload to update)" }
            }
            (flash(p.flash.as_ref()))
            section #summary-s aria-label="State" {
                div #summary { (summary(ctx.operator(), &p.head, p.panel.failure.as_ref())) }
            }
            section aria-labelledby="progress-h" {
                h2 #progress-h { "Install progress" }
                div #panel { (panel(p.panel)) }
            }
            section aria-labelledby="output-h" {
                h2 #output-h { "Output" }
                p.note { "The last lines of the current attempt's program output (nixos-install); every event is under Attempts." }
                div #output-lines .output role="log" aria-live="off" tabindex="0" { (output_lines(p.output.iter().copied())) }
            }
            @if let Some(v) = &p.detail.verify {
                section aria-labelledby="verify-h" { h2 #verify-h { "First-boot checks" } (verify(v)) }
            }
            @if let Some(inv) = &p.detail.inventory {
                section aria-labelledby="inv-h" { h2 #inv-h { "Inventory" } (inventory(inv)) }
            }
            @if let Some(id) = &p.detail.identity {
                section aria-labelledby="id-h" { h2 #id-h { "Identity" } (identity(&id.pinned, &id.presented)) }
            }
            section #attempts aria-labelledby="att-h" {
                h2 #att-h { "Attempts" }
                (attempts(&s.mac, &p.detail.attempts, p.selected, p.after))
            }
        }
    }
}

/// The confirmation of an action, naming the machine and what happens.
pub fn confirm(
    ctx: &Ctx<'_>,
    mac: &str,
    name: &str,
    verb: &str,
    what: &str,
    action: &str,
) -> Markup {
    html! {
        h1 { (verb) " " (name) "?" }
        p { (what) }
        form method="post" action={ (machine_url(mac)) "/" (action) } {
            input type="hidden" name="csrf" value=(ctx.session.csrf);
            button type="submit" autofocus { "Yes, " (verb.to_lowercase()) " " (name) }
            " "
            a href=(machine_url(mac)) { "Cancel" }
        }
    }
}

pub fn login(csrf: &str, next: &str, error: Option<&str>, has_users: bool) -> Markup {
    html! {
        h1 { "Log in to landfall" }
        @if let Some(e) = error { p.flash.err role="alert" { (e) } }
        @if has_users {
            form.login method="post" action={ (ROOT) "/login" } {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                p { label for="user" { "User" } input #user name="user" autocomplete="username" required autofocus; }
                p { label for="password" { "Password" } input #password type="password" name="password" autocomplete="current-password" required; }
                p { button type="submit" { "Log in" } }
            }
        }
        form.login method="post" action={ (ROOT) "/login" } {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="next" value=(next);
            p { label for="token" { "Admin token" } input #token type="password" name="token" autocomplete="off" required autofocus[!has_users]; }
            p.note { "The token is in the server's " code { "DATA/admin.token" } "; it logs in as an operator." }
            p { button type="submit" { "Log in with the token" } }
        }
    }
}

pub fn error_page(status: u16, text: &str) -> Markup {
    html! {
        h1 { "Error " (status) }
        p.flash.err role="alert" { (text) }
        p { a href={ (ROOT) "/" } { "Back to the fleet" } }
    }
}

/// Unescaped markup the templates made already.
pub fn raw(s: String) -> Markup {
    PreEscaped(s)
}
