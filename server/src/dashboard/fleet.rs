//! The fleet page: counts by state (what needs a person first), a filter by
//! state, role and text, sortable columns, one page of machines.

use std::collections::BTreeMap;

use landfall_proto::MachineState;
use maud::{html, Markup};

use super::panel::fraction_at;
use super::views::{self, ago, cut, machine_url, progress_bar, state_badge, Ctx, ROOT};
use crate::app::App;
use crate::store::{FleetRow, LastEvent};

/// States in the order the page shows them: what needs a person first
/// (failed, compromised, held for approval), then what moves, then what is done.
pub const STATE_ORDER: [MachineState; 13] = [
    MachineState::Failed,
    MachineState::Compromised,
    MachineState::IdentityHeld,
    MachineState::Discovered,
    MachineState::Degraded,
    MachineState::RetryRequested,
    MachineState::ReinstallRequested,
    MachineState::Installing,
    MachineState::Assigned,
    MachineState::Expected,
    MachineState::Installed,
    MachineState::Ready,
    MachineState::Unknown,
];

/// The states counted as needing a person.
fn attention(s: MachineState) -> bool {
    matches!(
        s,
        MachineState::Failed
            | MachineState::Compromised
            | MachineState::IdentityHeld
            | MachineState::Discovered
            | MachineState::Degraded
    )
}

fn rank(s: MachineState) -> usize {
    STATE_ORDER
        .iter()
        .position(|x| *x == s)
        .unwrap_or(STATE_ORDER.len())
}

/// Rows per page by default, and at most.
pub const PER_PAGE: usize = 100;
pub const MAX_PER_PAGE: usize = 1000;

#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct FleetQuery {
    #[serde(default)]
    pub state: String,
    #[serde(default)]
    pub role: String,
    #[serde(default)]
    pub q: String,
    #[serde(default)]
    pub sort: String,
    #[serde(default)]
    pub dir: String,
    pub page: Option<usize>,
    pub per: Option<usize>,
}

/// The sortable columns: (key, header).
const COLUMNS: [(&str, &str); 6] = [
    ("host", "Hostname"),
    ("mac", "MAC"),
    ("role", "Role"),
    ("state", "State"),
    ("since", "In state"),
    ("updated", "Last activity"),
];

/// The whole fleet: stored machines and `[[machines]]` never booted.
pub async fn rows(app: &App) -> anyhow::Result<Vec<FleetRow>> {
    let mut rows = app.store.read(|tx| tx.fleet_rows()).await?;
    let known: std::collections::HashSet<&str> = rows.iter().map(|r| r.mac.as_str()).collect();
    let expected: Vec<FleetRow> = app
        .settings
        .machines
        .iter()
        .filter(|(mac, _)| !known.contains(mac.as_str()))
        .map(|(mac, m)| FleetRow {
            mac: mac.clone(),
            hostname: Some(m.hostname.clone()),
            role: Some(m.role.clone()),
            state: MachineState::Expected,
            error: None,
            updated_at: 0,
            state_since: 0,
            current_attempt: None,
        })
        .collect();
    rows.extend(expected);
    Ok(rows)
}

/// Filter and sort in place; the counts are of the whole fleet.
pub fn select(rows: &mut Vec<FleetRow>, q: &FleetQuery) {
    let text = q.q.trim().to_lowercase();
    rows.retain(|r| {
        (q.state.is_empty() || r.state.as_str() == q.state)
            && (q.role.is_empty() || r.role.as_deref() == Some(q.role.as_str()))
            && (text.is_empty()
                || r.mac.contains(&text)
                || r.hostname
                    .as_deref()
                    .is_some_and(|h| h.to_lowercase().contains(&text))
                || r.role.as_deref().is_some_and(|h| h.contains(&text))
                || r.error
                    .as_deref()
                    .is_some_and(|e| e.to_lowercase().contains(&text)))
    });
    let host = |r: &FleetRow| (r.hostname.is_none(), r.hostname.clone(), r.mac.clone());
    match q.sort.as_str() {
        "host" => rows.sort_by_cached_key(host),
        "mac" => rows.sort_by(|a, b| a.mac.cmp(&b.mac)),
        "role" => rows.sort_by(|a, b| (&a.role, &a.hostname).cmp(&(&b.role, &b.hostname))),
        "state" => rows
            .sort_by(|a, b| (a.state.as_str(), &a.hostname).cmp(&(b.state.as_str(), &b.hostname))),
        // Longest in state first when ascending by "time in state".
        "since" => rows.sort_by_key(|r| (r.state == MachineState::Expected, r.state_since)),
        "updated" => rows.sort_by_key(|r| std::cmp::Reverse(r.updated_at)),
        // Default: what needs a person first, then by hostname.
        _ => rows.sort_by(|a, b| {
            (rank(a.state), a.hostname.is_none(), &a.hostname, &a.mac).cmp(&(
                rank(b.state),
                b.hostname.is_none(),
                &b.hostname,
                &b.mac,
            ))
        }),
    }
    if q.dir == "desc" {
        rows.reverse();
    }
}

/// Counts by state, in [`STATE_ORDER`].
pub fn counts(rows: &[FleetRow]) -> Vec<(MachineState, usize)> {
    let mut by: BTreeMap<usize, (MachineState, usize)> = BTreeMap::new();
    for r in rows {
        by.entry(rank(r.state)).or_insert((r.state, 0)).1 += 1;
    }
    by.into_values().collect()
}

fn query_string(q: &FleetQuery, sort: &str, dir: &str, page: usize) -> String {
    let mut parts = Vec::new();
    let enc = |s: &str| {
        s.bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect::<String>()
    };
    for (k, v) in [("state", &q.state), ("role", &q.role), ("q", &q.q)] {
        if !v.is_empty() {
            parts.push(format!("{k}={}", enc(v)));
        }
    }
    if !sort.is_empty() {
        parts.push(format!("sort={}", enc(sort)));
    }
    if dir == "desc" {
        parts.push("dir=desc".into());
    }
    if page > 1 {
        parts.push(format!("page={page}"));
    }
    if let Some(per) = q.per {
        parts.push(format!("per={per}"));
    }
    if parts.is_empty() {
        format!("{ROOT}/")
    } else {
        format!("{ROOT}/?{}", parts.join("&"))
    }
}

/// Everything the fleet template shows.
pub struct FleetView<'a> {
    pub query: &'a FleetQuery,
    pub total: usize,
    pub counts: Vec<(MachineState, usize)>,
    pub roles: Vec<String>,
    pub matching: usize,
    pub page: usize,
    pub pages: usize,
    pub per: usize,
    pub rows: &'a [FleetRow],
    pub last: &'a std::collections::HashMap<String, LastEvent>,
    pub now: i64,
}

pub fn view(ctx: &Ctx<'_>, v: &FleetView<'_>) -> Markup {
    let q = v.query;
    let first = (v.page - 1) * v.per;
    html! {
        h1 { "Fleet" }
        (views::flash(ctx.session.flash.as_ref()))
        section aria-labelledby="counts-h" {
            h2 #counts-h .vh { "Machines by state" }
            ul.counts {
                li { a href=(query_string(&FleetQuery::default(), "", "", 1)) { strong { (v.total) } " machines" } }
                @for (s, n) in &v.counts {
                    li.attention[attention(*s)] {
                        a href=(query_string(&FleetQuery { state: s.as_str().into(), ..Default::default() }, "", "", 1))
                          aria-current=[(q.state == s.as_str()).then_some("true")] {
                            strong { (n) } " " (state_badge(*s))
                        }
                    }
                }
            }
        }
        form.filter method="get" action={ (ROOT) "/" } role="search" aria-label="Filter machines" {
            label { "State " select name="state" {
                option value="" { "any" }
                @for s in STATE_ORDER.iter().filter(|s| **s != MachineState::Unknown) {
                    option value=(s.as_str()) selected[q.state == s.as_str()] { (s.as_str().replace('_', " ")) }
                }
            } }
            label { "Role " select name="role" {
                option value="" { "any" }
                @for r in &v.roles { option value=(r) selected[q.role == *r] { (r) } }
            } }
            label { "Search " input type="search" name="q" value=(q.q) placeholder="hostname, MAC, error"; }
            @if !q.sort.is_empty() { input type="hidden" name="sort" value=(q.sort); }
            @if q.dir == "desc" { input type="hidden" name="dir" value="desc"; }
            button type="submit" { "Filter" }
            @if !q.state.is_empty() || !q.role.is_empty() || !q.q.is_empty() {
                " " a href=(query_string(&FleetQuery::default(), &q.sort, &q.dir, 1)) { "Clear" }
            }
        }
        p #fleet-count role="status" {
            @if v.matching == 0 { "No machine matches." }
            @else { "Machines " (first + 1) "–" (first + v.rows.len()) " of " (v.matching) }
        }
        div.scroll {
            table.fleet {
                caption.vh { "Machines, sorted by " (COLUMNS.iter().find(|c| c.0 == q.sort).map_or("state, then hostname", |c| c.1)) }
                thead { tr {
                    @for (key, label) in COLUMNS {
                        @let on = q.sort == key;
                        @let dir = if on && q.dir != "desc" { "desc" } else { "asc" };
                        th scope="col" aria-sort=[on.then_some(if q.dir == "desc" { "descending" } else { "ascending" })] {
                            a href=(query_string(q, key, dir, 1)) { (label) @if on { @if q.dir == "desc" { " ▼" } @else { " ▲" } } }
                        }
                        @if key == "state" { th scope="col" { "Step" } th scope="col" { "Last event" } }
                    }
                } }
                tbody {
                    @for r in v.rows {
                        @let last = r.current_attempt.as_ref().and_then(|a| v.last.get(a));
                        tr class={ "s-row-" (r.state.as_str()) } {
                            th scope="row" { a href=(machine_url(&r.mac)) { (r.hostname.as_deref().unwrap_or("(no hostname)")) } }
                            td { code { (r.mac) } }
                            td { (r.role.as_deref().unwrap_or("-")) }
                            td { (state_badge(r.state)) }
                            td.step { (step_cell(r, last)) }
                            td.wrap { (last_cell(r, last)) }
                            td { @if r.state == MachineState::Expected { "never booted" } @else { (ago(v.now, r.state_since)) } }
                            td { @if r.updated_at > 0 { (ago(v.now, r.updated_at)) " ago" } @else { "-" } }
                        }
                    }
                }
            }
        }
        @if v.pages > 1 {
            nav.pager aria-label="Pages" {
                @if v.page > 1 { a href=(query_string(q, &q.sort, &q.dir, v.page - 1)) rel="prev" { "Previous" } }
                " Page " (v.page) " of " (v.pages) " "
                @if v.page < v.pages { a href=(query_string(q, &q.sort, &q.dir, v.page + 1)) rel="next" { "Next" } }
            }
        }
    }
}

fn step_cell(r: &FleetRow, last: Option<&LastEvent>) -> Markup {
    let done = matches!(
        r.state,
        MachineState::Installed | MachineState::Ready | MachineState::Degraded
    );
    html! {
        @if done {
            "done " (progress_bar(1.0, "Install"))
        } @else if let Some(l) = last {
            @let e = &l.event;
            @if e.step == landfall_proto::Step::Done && r.state == MachineState::Installing {
                "retrying"
            } @else if matches!(r.state, MachineState::Installing | MachineState::RetryRequested) {
                (e.step.as_str()) " " (progress_bar(fraction_at(e.step, e.kind, l.progress), "Install"))
            } @else {
                (e.step.as_str())
            }
        } @else { "-" }
    }
}

fn last_cell(r: &FleetRow, last: Option<&LastEvent>) -> Markup {
    html! {
        @if let Some(l) = last {
            span.kind { (l.event.kind.as_str()) } " " (cut(&l.event.message, 80))
        } @else if let Some(e) = &r.error {
            (cut(e, 80))
        } @else { "-" }
    }
}

/// Page through the selection: (page, pages, per, the page's rows).
pub fn paginate<'a>(rows: &'a [FleetRow], q: &FleetQuery) -> (usize, usize, usize, &'a [FleetRow]) {
    let per = q.per.unwrap_or(PER_PAGE).clamp(1, MAX_PER_PAGE);
    let pages = rows.len().div_ceil(per).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let start = (page - 1) * per;
    let end = (start + per).min(rows.len());
    (page, pages, per, &rows[start.min(end)..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mac: &str, host: &str, state: MachineState, since: i64) -> FleetRow {
        FleetRow {
            mac: mac.into(),
            hostname: Some(host.into()),
            role: Some("ws".into()),
            state,
            error: None,
            updated_at: since,
            state_since: since,
            current_attempt: None,
        }
    }

    #[test]
    fn failed_compromised_and_held_come_first_and_filters_apply() {
        let mut rows = vec![
            row("m1", "a", MachineState::Ready, 1),
            row("m2", "b", MachineState::Failed, 2),
            row("m3", "c", MachineState::Installing, 3),
            row("m4", "d", MachineState::IdentityHeld, 4),
            row("m5", "e", MachineState::Compromised, 5),
        ];
        let c = counts(&rows);
        assert_eq!(c[0], (MachineState::Failed, 1));
        assert_eq!(c[1], (MachineState::Compromised, 1));
        assert_eq!(c[2], (MachineState::IdentityHeld, 1));
        select(&mut rows, &FleetQuery::default());
        let hosts: Vec<_> = rows.iter().map(|r| r.hostname.clone().unwrap()).collect();
        assert_eq!(hosts, ["b", "e", "d", "c", "a"]);
        let mut r2 = rows.clone();
        select(
            &mut r2,
            &FleetQuery {
                q: "C".into(),
                ..Default::default()
            },
        );
        assert_eq!(r2.len(), 1);
        let mut r3 = rows.clone();
        select(
            &mut r3,
            &FleetQuery {
                sort: "host".into(),
                dir: "desc".into(),
                ..Default::default()
            },
        );
        assert_eq!(r3[0].hostname.as_deref(), Some("e"));
        let (page, pages, _, shown) = paginate(
            &rows,
            &FleetQuery {
                per: Some(2),
                page: Some(9),
                ..Default::default()
            },
        );
        assert_eq!((page, pages, shown.len()), (3, 3, 1));
    }

    #[test]
    fn links_keep_the_filter_and_escape_it() {
        let q = FleetQuery {
            q: "a b&c".into(),
            state: "failed".into(),
            ..Default::default()
        };
        assert_eq!(
            query_string(&q, "host", "desc", 2),
            "/ui/?state=failed&q=a%20b%26c&sort=host&dir=desc&page=2"
        );
    }
}
