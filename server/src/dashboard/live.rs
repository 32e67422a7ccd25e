//! `GET /ui/machines/{key}/live`: a machine's page kept up to date by
//! server-sent events. Each event is an HTML fragment rendered here from
//! the same templates as the page (`summary`, `panel`: replace; `output`:
//! replace the lines, `append`: add lines; `reload`: load the page again,
//! e.g. after logging out). The feed tells the viewer what is new; the
//! viewer sends at most one update per [`TICK`], however fast events come.

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::Stream;
use landfall_proto::Event;
use tokio::sync::mpsc;

use super::feed::Wake;
use super::pages::{head, load_attempt, OUTPUT_LINES};
use super::panel::{is_output, Panel};
use super::views::{self, Ctx};
use super::{DashState, PageError, User};
use crate::api::admin;

/// Shortest time between two updates of one viewer.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest a viewer goes without looking at the machine and its session.
const IDLE: Duration = Duration::from_secs(10);

pub async fn stream(
    State(d): State<DashState>,
    user: User,
    Path(key): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, Infallible>>>, PageError> {
    let row = admin::find_key(&d.app, &key).await?;
    let (tx, rx) = mpsc::channel::<SseEvent>(8);
    tokio::spawn(async move {
        let mac = row.mac.clone();
        if let Err(e) = run(d, user, row.mac, tx).await {
            tracing::warn!(%mac, "dashboard live view: {e:#}");
        }
    });
    let events =
        futures_util::stream::unfold(
            rx,
            |mut rx| async move { rx.recv().await.map(|e| (Ok(e), rx)) },
        );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

fn ev(name: &str, html: maud::Markup) -> SseEvent {
    SseEvent::default().event(name).data(html.into_string())
}

/// What one viewer has shown.
struct Shown {
    panel: Panel,
    /// The highest seq shown (panel or output): older ones are not shown again.
    seen: u64,
    head_html: String,
}

async fn run(
    d: DashState,
    user: User,
    mac: String,
    tx: mpsc::Sender<SseEvent>,
) -> anyhow::Result<()> {
    let app = &d.app;
    let ctx_session = user.session.clone();
    let ctx = Ctx {
        session: &ctx_session,
    };
    // Watch before reading the store: what comes in meanwhile is in both,
    // and `seen` drops the copy.
    let mut viewer = app.feed.watch(&mac);
    let mut shown = match full(&d, &ctx, &mac, &tx).await? {
        Some(s) => s,
        None => return Ok(()),
    };
    let mut last_sent = Instant::now();
    loop {
        let wake = tokio::select! {
            w = viewer.wait(IDLE) => w,
            _ = tx.closed() => return Ok(()),
        };
        let since = last_sent.elapsed();
        if since < TICK {
            tokio::select! {
                _ = tokio::time::sleep(TICK - since) => {}
                _ = tx.closed() => return Ok(()),
            }
        }
        if !d.sessions.alive(&user.cookie) {
            let _ = tx.send(ev("reload", maud::html! {})).await;
            return Ok(());
        }
        let state_changed = viewer.take_state_change() || wake == Wake::Timeout;
        let taken = viewer.take();
        last_sent = Instant::now();
        let m = mac.clone();
        let Some(row) = app.store.read(move |tx| tx.machine(&m)).await? else {
            let _ = tx.send(ev("reload", maud::html! {})).await;
            return Ok(());
        };
        if taken.lagged || row.current_attempt != shown.panel.attempt {
            // Behind the ring, or a new attempt: everything again.
            shown = match full(&d, &ctx, &mac, &tx).await? {
                Some(s) => s,
                None => return Ok(()),
            };
            continue;
        }
        let mut panel_changed = false;
        let mut failure_changed = false;
        let mut lines: Vec<&Event> = Vec::new();
        for (attempt, e) in &taken.events {
            if shown.panel.attempt.as_deref() != Some(&**attempt) || e.seq <= shown.seen {
                continue;
            }
            shown.seen = e.seq;
            if is_output(e) {
                lines.push(&**e);
            }
            if e.kind != landfall_proto::EventKind::Log {
                let had = shown.panel.failure.clone();
                shown.panel.apply(e);
                panel_changed = true;
                failure_changed |= shown.panel.failure != had;
            }
        }
        if panel_changed
            && tx
                .send(ev("panel", views::panel(&shown.panel)))
                .await
                .is_err()
        {
            return Ok(());
        }
        if !lines.is_empty() {
            let extra = lines.len().saturating_sub(OUTPUT_LINES);
            let html = views::output_lines(lines[extra..].iter().copied());
            if tx.send(ev("append", html)).await.is_err() {
                return Ok(());
            }
        }
        if state_changed || failure_changed {
            let h = views::summary(&ctx, &head(app, &row).await?, shown.panel.failure.as_ref())
                .into_string();
            if h != shown.head_html {
                if tx
                    .send(SseEvent::default().event("summary").data(h.clone()))
                    .await
                    .is_err()
                {
                    return Ok(());
                }
                shown.head_html = h;
            }
        }
    }
}

/// Send the whole live part of the page from the store: summary, panel and
/// output lines. `None`: the viewer left or the machine is gone.
async fn full(
    d: &DashState,
    ctx: &Ctx<'_>,
    mac: &str,
    tx: &mpsc::Sender<SseEvent>,
) -> anyhow::Result<Option<Shown>> {
    let app = &d.app;
    let m = mac.to_owned();
    let Some(row) = app.store.read(move |tx| tx.machine(&m)).await? else {
        let _ = tx.send(ev("reload", maud::html! {})).await;
        return Ok(None);
    };
    let (panel, output) = load_attempt(app, row.current_attempt.as_deref()).await?;
    let head_html =
        views::summary(ctx, &head(app, &row).await?, panel.failure.as_ref()).into_string();
    let seen = panel.last_seq;
    let sends = [
        SseEvent::default().event("summary").data(head_html.clone()),
        ev("panel", views::panel(&panel)),
        ev("output", views::output_lines(output.iter())),
    ];
    for s in sends {
        if tx.send(s).await.is_err() {
            return Ok(None);
        }
    }
    Ok(Some(Shown {
        panel,
        seen,
        head_html,
    }))
}
