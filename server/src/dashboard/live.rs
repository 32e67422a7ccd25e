//! `GET /ui/machines/{key}/live`: a machine's page kept up to date by
//! server-sent events. Each event is an HTML fragment rendered from the same
//! templates as the page (`summary`, `panel`: replace; `output`: replace the
//! lines, `append`: add lines; `reload`: load the page again, e.g. after
//! logging out or when the machine is gone).
//!
//! One [`Hub`] per watched machine, however many people watch it: a single
//! renderer task takes the machine's new events from the [`feed`](super::feed)
//! at most once per [`TICK`], reads the store only when the state or the
//! attempt changed, renders each fragment once and broadcasts the encoded
//! SSE bytes (`Bytes`, shared, not copied) to every viewer. The summary is
//! rendered twice, once per role (an operator sees the action links). An
//! update adds at most [`APPEND_LINES`] output lines: in a burst the newest.
//!
//! Nobody waits on a viewer: the agent API's publish only fills the feed's
//! ring; the renderer's broadcast never blocks; a viewer too slow to keep up
//! (its client reads slowly) loses frames from the broadcast and gets the
//! hub's current state instead ("resync": summary, step panel and output
//! replaced), rendered at most once per frame and shared by all who need it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use landfall_proto::{Event, EventKind};
use tokio::sync::{broadcast, Notify};

use super::feed::{self, Wake};
use super::pages::{head, load_attempt, OUTPUT_LINES};
use super::panel::{is_output, Panel};
use super::views;
use super::{DashState, PageError, User};
use crate::api::admin;
use crate::config::Role;
use crate::store::MachineRow;

/// Shortest time between two updates of a machine's viewers.
pub const TICK: Duration = Duration::from_millis(250);
/// Longest the renderer goes without looking at the machine (the "for 3m"
/// of the summary); also how often a quiet stream is kept alive and its
/// session checked.
const IDLE: Duration = Duration::from_secs(10);
/// Frames a viewer may fall behind before it is resynced (16 s of ticks).
const BACKLOG: usize = 64;
/// Most output lines one update adds (200 a second): in a faster burst the
/// newest are shown and the rest skipped (every line is under Attempts), so
/// a storm of output costs each viewer's connection a bounded rate.
pub const APPEND_LINES: usize = 50;

/// The hubs of the machines being watched, by MAC.
#[derive(Default)]
pub struct Hubs {
    map: Mutex<HashMap<String, Arc<Hub>>>,
}

impl Hubs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Hub>>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The hub of `mac` and a subscription to it, made (from the store) if
    /// nobody watches it yet. `None`: the machine is not stored.
    async fn join(&self, d: &DashState, mac: &str) -> anyhow::Result<Option<(Arc<Hub>, Rx)>> {
        if let Some(h) = self.lock().get(mac) {
            return Ok(Some((h.clone(), h.tx.subscribe())));
        }
        // Watch before reading the store: what is stored meanwhile is in
        // both, and the seq drops the copy.
        let watch = d.app.feed.watch(mac);
        let m = mac.to_owned();
        let Some(row) = d.app.store.read(move |tx| tx.machine(&m)).await? else {
            return Ok(None);
        };
        let state = Rendered::load(d, row).await?;
        let mut map = self.lock();
        if let Some(h) = map.get(mac) {
            // Another viewer made it meanwhile.
            return Ok(Some((h.clone(), h.tx.subscribe())));
        }
        let hub = Arc::new(Hub {
            mac: mac.to_owned(),
            tx: broadcast::channel(BACKLOG).0,
            snap: Mutex::new(Snapshot::new(&state)),
            left: Notify::new(),
        });
        let rx = hub.tx.subscribe();
        map.insert(mac.to_owned(), hub.clone());
        drop(map);
        tokio::spawn(render(d.clone(), hub.clone(), watch, state));
        Ok(Some((hub, rx)))
    }

    /// Forget `hub` if nobody watches it (checked under the lock viewers
    /// join under, so none joins a hub that is ending).
    fn end_if_unwatched(&self, hub: &Arc<Hub>) -> bool {
        let mut map = self.lock();
        if hub.tx.receiver_count() > 0 {
            return false;
        }
        if map.get(&hub.mac).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            map.remove(&hub.mac);
        }
        true
    }

    fn remove(&self, hub: &Arc<Hub>) {
        let mut map = self.lock();
        if map.get(&hub.mac).is_some_and(|h| Arc::ptr_eq(h, hub)) {
            map.remove(&hub.mac);
        }
    }
}

type Rx = broadcast::Receiver<Arc<Frame>>;

/// One watched machine: its renderer's broadcast and current state.
struct Hub {
    mac: String,
    tx: broadcast::Sender<Arc<Frame>>,
    snap: Mutex<Snapshot>,
    /// A viewer left (the renderer looks whether any is left).
    left: Notify,
}

/// What one tick changed, encoded once: the SSE bytes each role gets (the
/// same `Bytes` for both when the summary did not change).
#[derive(Debug)]
struct Frame {
    no: u64,
    by_role: [Bytes; 2],
    /// The stream ends after this frame (`reload`).
    last: bool,
}

fn role_index(r: Role) -> usize {
    usize::from(r >= Role::Operator)
}

/// The hub's current state, rendered: what a joining or resynced viewer is
/// sent. Each piece is rendered once; the encoded whole is cached per role
/// until the next frame.
struct Snapshot {
    /// The number of the last frame this state includes.
    frame: u64,
    summary: [Arc<str>; 2],
    panel: Arc<str>,
    /// The last [`OUTPUT_LINES`] output lines, each rendered.
    lines: VecDeque<Arc<str>>,
    cached: [Option<(u64, Bytes)>; 2],
}

impl Snapshot {
    fn new(r: &Rendered) -> Self {
        Self {
            frame: 0,
            summary: r.summary.clone(),
            panel: r.panel_html.clone(),
            lines: r.lines.clone(),
            cached: [None, None],
        }
    }

    fn encoded(&mut self, role: usize) -> (u64, Bytes) {
        if let Some((no, b)) = &self.cached[role] {
            if *no == self.frame {
                return (*no, b.clone());
            }
        }
        let mut out = Vec::new();
        sse(&mut out, "summary", &self.summary[role]);
        sse(&mut out, "panel", &self.panel);
        let lines: String = self.lines.iter().map(|l| &**l).collect();
        sse(&mut out, "output", &lines);
        let b = Bytes::from(out);
        self.cached[role] = Some((self.frame, b.clone()));
        (self.frame, b)
    }
}

/// Append one SSE event; every line of `data` its own `data:` field (the
/// browser joins them with `\n`).
fn sse(out: &mut Vec<u8>, name: &str, data: &str) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.push(b'\n');
    for line in data.split('\n') {
        for part in line.strip_suffix('\r').unwrap_or(line).split('\r') {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(part.as_bytes());
            out.push(b'\n');
        }
    }
    out.push(b'\n');
}

fn one(name: &str, data: &str) -> Bytes {
    let mut out = Vec::new();
    sse(&mut out, name, data);
    Bytes::from(out)
}

/// The renderer's own state of the machine.
struct Rendered {
    row: MachineRow,
    panel: Panel,
    /// The highest seq shown (panel or output): older ones are not shown again.
    seen: u64,
    summary: [Arc<str>; 2],
    panel_html: Arc<str>,
    lines: VecDeque<Arc<str>>,
}

impl Rendered {
    /// Everything from the store.
    async fn load(d: &DashState, row: MachineRow) -> anyhow::Result<Self> {
        let (panel, output) = load_attempt(&d.app, row.current_attempt.as_deref()).await?;
        let lines = output.iter().map(line_html).collect();
        let mut r = Self {
            seen: panel.last_seq,
            panel_html: views::panel(&panel).into_string().into(),
            summary: [Arc::from(""), Arc::from("")],
            panel,
            lines,
            row,
        };
        r.summary = r.render_summary(d).await?;
        Ok(r)
    }

    async fn render_summary(&self, d: &DashState) -> anyhow::Result<[Arc<str>; 2]> {
        let h = head(&d.app, &self.row).await?;
        let f = self.panel.failure.as_ref();
        Ok([
            views::summary(false, &h, f).into_string().into(),
            views::summary(true, &h, f).into_string().into(),
        ])
    }
}

fn line_html(e: &Event) -> Arc<str> {
    views::output_lines(std::iter::once(e)).into_string().into()
}

/// The renderer of one hub: until nobody watches.
async fn render(d: DashState, hub: Arc<Hub>, mut watch: feed::Viewer, mut state: Rendered) {
    let mut last = Instant::now();
    // Resync from the store at the next tick (after a store error).
    let mut stale = false;
    loop {
        let wake = tokio::select! {
            w = watch.wait(IDLE) => w,
            _ = hub.left.notified() => {
                if d.hubs.end_if_unwatched(&hub) {
                    return;
                }
                continue;
            }
        };
        if d.hubs.end_if_unwatched(&hub) {
            return;
        }
        let since = last.elapsed();
        if since < TICK {
            tokio::time::sleep(TICK - since).await;
        }
        last = Instant::now();
        let state_changed = watch.take_state_change() || wake == Wake::Timeout;
        let taken = watch.take();
        match tick(&d, &hub, &mut state, state_changed, stale, taken).await {
            Ok(true) => stale = false,
            Ok(false) => {
                // The machine is gone: the viewers reload (and see so).
                d.hubs.remove(&hub);
                let no = hub.snap.lock().unwrap_or_else(|p| p.into_inner()).frame + 1;
                let b = one("reload", "");
                let _ = hub.tx.send(Arc::new(Frame {
                    no,
                    by_role: [b.clone(), b],
                    last: true,
                }));
                return;
            }
            Err(e) => {
                tracing::warn!(mac = %hub.mac, "dashboard live view: {e:#}");
                stale = true;
            }
        }
    }
}

/// One tick: fold what the feed brought into the state, render what changed
/// once, and broadcast it. `Ok(false)`: the machine is gone.
async fn tick(
    d: &DashState,
    hub: &Hub,
    st: &mut Rendered,
    state_changed: bool,
    resync: bool,
    taken: feed::Taken,
) -> anyhow::Result<bool> {
    let other_attempt = taken
        .events
        .iter()
        .any(|(a, _)| st.panel.attempt.as_deref() != Some(&**a));
    let mut summary_due = false;
    if state_changed || resync || taken.lagged || other_attempt {
        let m = hub.mac.clone();
        let Some(row) = d.app.store.read(move |tx| tx.machine(&m)).await? else {
            return Ok(false);
        };
        if resync || taken.lagged || row.current_attempt != st.panel.attempt {
            // Behind the feed's ring, a new attempt, or after an error:
            // everything again, from the store.
            *st = Rendered::load(d, row).await?;
            let mut snap = hub.snap.lock().unwrap_or_else(|p| p.into_inner());
            let frame = snap.frame + 1;
            *snap = Snapshot::new(st);
            snap.frame = frame;
            let by_role = [snap.encoded(0).1, snap.encoded(1).1];
            drop(snap);
            let _ = hub.tx.send(Arc::new(Frame {
                no: frame,
                by_role,
                last: false,
            }));
            return Ok(true);
        }
        st.row = row;
        summary_due = true;
    }
    let mut panel_changed = false;
    let mut new_lines: Vec<&Event> = Vec::new();
    for (attempt, e) in &taken.events {
        if st.panel.attempt.as_deref() != Some(&**attempt) || e.seq <= st.seen {
            continue;
        }
        st.seen = e.seq;
        if is_output(e) {
            new_lines.push(e);
        }
        if e.kind != EventKind::Log {
            let had = st.panel.failure.clone();
            st.panel.apply(e);
            panel_changed = true;
            summary_due |= st.panel.failure != had;
        }
    }
    let mut common = Vec::new();
    if panel_changed {
        st.panel_html = views::panel(&st.panel).into_string().into();
        sse(&mut common, "panel", &st.panel_html);
    }
    let extra = new_lines.len().saturating_sub(APPEND_LINES);
    let added: Vec<Arc<str>> = new_lines[extra..].iter().map(|e| line_html(e)).collect();
    if !added.is_empty() {
        let html: String = added.iter().map(|l| &**l).collect();
        sse(&mut common, "append", &html);
        st.lines.extend(added);
        let over = st.lines.len().saturating_sub(OUTPUT_LINES);
        st.lines.drain(..over);
    }
    let mut summary = None;
    if summary_due {
        let s = st.render_summary(d).await?;
        if s != st.summary {
            st.summary = s.clone();
            summary = Some(s);
        }
    }
    if common.is_empty() && summary.is_none() {
        return Ok(true);
    }
    let by_role = match &summary {
        None => {
            let b = Bytes::from(common);
            [b.clone(), b]
        }
        Some(s) => [0, 1].map(|r| {
            let mut out = common.clone();
            sse(&mut out, "summary", &s[r]);
            Bytes::from(out)
        }),
    };
    let mut snap = hub.snap.lock().unwrap_or_else(|p| p.into_inner());
    snap.frame += 1;
    snap.summary = st.summary.clone();
    snap.panel = st.panel_html.clone();
    snap.lines = st.lines.clone();
    let no = snap.frame;
    drop(snap);
    let _ = hub.tx.send(Arc::new(Frame {
        no,
        by_role,
        last: false,
    }));
    Ok(true)
}

/// One viewer's stream: the hub's state, then its frames.
struct Conn {
    /// Whether the viewer's session still lives (not logged out, not expired).
    alive: Box<dyn Fn() -> bool + Send>,
    hub: Arc<Hub>,
    /// Taken when the stream ends, so the renderer counts it gone.
    rx: Option<Rx>,
    role: usize,
    /// The number of the last frame sent (or included in a snapshot sent).
    shown: u64,
    first: Option<Bytes>,
    done: bool,
}

impl Drop for Conn {
    fn drop(&mut self) {
        drop(self.rx.take());
        self.hub.left.notify_one();
    }
}

impl Conn {
    fn snapshot(&mut self) -> Bytes {
        let (no, b) = self
            .hub
            .snap
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .encoded(self.role);
        self.shown = no;
        b
    }

    /// The next bytes to send; `None` ends the stream.
    async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if let Some(b) = self.first.take() {
            return Some(b);
        }
        loop {
            let rx = self.rx.as_mut()?;
            let got = tokio::time::timeout(IDLE, rx.recv()).await;
            if !(self.alive)() {
                self.done = true;
                return Some(one("reload", ""));
            }
            match got {
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
                Ok(Ok(f)) if f.no <= self.shown => continue,
                Ok(Ok(f)) => {
                    self.shown = f.no;
                    self.done = f.last;
                    return Some(f.by_role[self.role].clone());
                }
                // Too slow for the broadcast: the current state instead,
                // and on from the newest frame (the backlog is dropped).
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    *rx = rx.resubscribe();
                    return Some(self.snapshot());
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    self.done = true;
                    return Some(one("reload", ""));
                }
            }
        }
    }
}

pub async fn stream(
    State(d): State<DashState>,
    user: User,
    Path(key): Path<String>,
) -> Result<Response, PageError> {
    let row = admin::find_key(&d.app, &key).await?;
    let Some((hub, rx)) = d.hubs.join(&d, &row.mac).await? else {
        return Err(PageError::from(super::page_error(
            axum::http::StatusCode::NOT_FOUND,
            &format!("no machine {key:?} is stored"),
        )));
    };
    let cookie = user.cookie;
    let sessions = d.clone();
    let mut conn = Conn {
        alive: Box::new(move || sessions.sessions.alive(&cookie)),
        hub,
        rx: Some(rx),
        role: role_index(user.session.role),
        shown: 0,
        first: None,
        done: false,
    };
    conn.first = Some(conn.snapshot());
    let body = futures_util::stream::unfold(conn, |mut c| async move {
        c.next().await.map(|b| (Ok::<_, Infallible>(b), c))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub(frame: u64) -> Arc<Hub> {
        Arc::new(Hub {
            mac: "52:54:00:00:00:01".into(),
            tx: broadcast::channel(BACKLOG).0,
            snap: Mutex::new(Snapshot {
                frame,
                summary: [Arc::from("as viewer"), Arc::from("as operator")],
                panel: Arc::from("<ol>steps</ol>"),
                lines: ["<div>1</div>", "<div>2</div>"]
                    .into_iter()
                    .map(Arc::from)
                    .collect(),
                cached: [None, None],
            }),
            left: Notify::new(),
        })
    }

    fn frame(no: u64, text: &str) -> Arc<Frame> {
        Arc::new(Frame {
            no,
            by_role: [
                one("append", &format!("v{text}")),
                one("append", &format!("o{text}")),
            ],
            last: false,
        })
    }

    fn conn(hub: &Arc<Hub>, role: usize, alive: Arc<std::sync::atomic::AtomicBool>) -> Conn {
        let mut c = Conn {
            alive: Box::new(move || alive.load(std::sync::atomic::Ordering::SeqCst)),
            rx: Some(hub.tx.subscribe()),
            hub: hub.clone(),
            role,
            shown: 0,
            first: None,
            done: false,
        };
        c.first = Some(c.snapshot());
        c
    }

    async fn text(c: &mut Conn) -> String {
        String::from_utf8(c.next().await.unwrap().to_vec()).unwrap()
    }

    #[tokio::test]
    async fn viewers_share_frames_skip_what_their_snapshot_had_and_resync_when_behind() {
        let h = hub(3);
        let alive = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let mut viewer = conn(&h, 0, alive.clone());
        let mut operator = conn(&h, 1, alive.clone());
        // Joining: the state as of frame 3, for the role.
        let first = text(&mut viewer).await;
        assert!(
            first.contains("event: summary\ndata: as viewer\n"),
            "{first}"
        );
        assert!(
            first.contains("event: output\ndata: <div>1</div><div>2</div>\n"),
            "{first}"
        );
        assert!(text(&mut operator).await.contains("data: as operator"));
        // A frame the snapshot had already is skipped; a newer one is sent,
        // the same bytes to every viewer of a role.
        h.tx.send(frame(3, "old")).unwrap();
        h.tx.send(frame(4, "new")).unwrap();
        assert_eq!(text(&mut viewer).await, "event: append\ndata: vnew\n\n");
        assert_eq!(text(&mut operator).await, "event: append\ndata: onew\n\n");

        // The operator's client reads nothing while more than the backlog
        // comes: it gets the current state once, then what follows.
        {
            let mut s = h.snap.lock().unwrap();
            s.frame = 4 + BACKLOG as u64 + 10;
            s.panel = Arc::from("<ol>later</ol>");
        }
        for no in 5..=4 + BACKLOG as u64 + 10 {
            h.tx.send(frame(no, &no.to_string())).unwrap();
        }
        let resync = text(&mut operator).await;
        assert!(
            resync.contains("data: as operator") && resync.contains("data: <ol>later</ol>"),
            "{resync}"
        );
        h.tx.send(frame(4 + BACKLOG as u64 + 11, "after")).unwrap();
        // The backlog is dropped; what follows the snapshot comes.
        assert_eq!(text(&mut operator).await, "event: append\ndata: oafter\n\n");

        // Logged out: the page reloads and the stream ends.
        alive.store(false, std::sync::atomic::Ordering::SeqCst);
        h.tx.send(frame(500, "x")).unwrap();
        assert_eq!(text(&mut viewer).await, "event: reload\ndata: \n\n");
        assert!(viewer.next().await.is_none());
        // Leaving is seen by the hub.
        assert_eq!(h.tx.receiver_count(), 2);
        drop(viewer);
        assert_eq!(h.tx.receiver_count(), 1);
    }

    #[test]
    fn every_line_of_the_data_is_its_own_field() {
        let mut out = Vec::new();
        sse(&mut out, "output", "<div>a</div>\n<pre>b\r\nc</pre>");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: output\ndata: <div>a</div>\ndata: <pre>b\ndata: c</pre>\n\n"
        );
    }
}
