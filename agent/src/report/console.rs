//! The technician's view on the machine's console: the step list with state,
//! a progress bar, server, IP, hostname and elapsed time. On a terminal the
//! panel is redrawn in place; otherwise (serial captured to a file, journald)
//! each event is one line, and progress at most one line a second per step.

use std::io::Write;
use std::time::{Duration, Instant};

use landfall_proto::{Event, EventKind, Step};

use crate::cmdline::ConsoleMode;

/// Shortest time between two panel redraws for progress and output lines.
const PANEL_INTERVAL: Duration = Duration::from_millis(250);

/// Most `log` lines drawn per second on line consoles.
const LOG_LINES_PER_SECOND: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StepState {
    Pending,
    Running,
    Done,
    Failed,
}

/// One place the console is drawn: stdout, /dev/tty0, /dev/ttyS0, ...
struct Target {
    out: Box<dyn Write + Send>,
    redraw: bool,
    drawn_lines: usize,
}

pub struct Console {
    targets: Vec<Target>,
    /// While something else owns the terminals (the passphrase prompt),
    /// nothing is drawn.
    paused: bool,
    steps: Vec<(Step, &'static str, StepState)>,
    started: Instant,
    server: String,
    ip: Option<String>,
    hostname: Option<String>,
    progress: Option<(Step, f32)>,
    last_message: String,
    last_progress_line: Option<(Step, Instant)>,
    /// `log` lines printed in the current second (its start) and those held
    /// back since: a program's output (nixos-install) must not flood a slow
    /// serial console; every line still reaches the server.
    log_window: (Instant, u32),
    log_held: u32,
    /// When the panel was last drawn, and whether it changed since: a
    /// redraw is ~1 KB, 90 ms on a 115200 baud serial console, so output
    /// lines must not each redraw it.
    last_draw: Option<Instant>,
    dirty: bool,
    /// Lines shown under the panel until cleared: a failure's error, last
    /// output and what the technician can do.
    detail: Vec<String>,
}

impl Console {
    /// `steps` are the pipeline's steps with a short description, in order.
    pub fn new(
        out: Box<dyn Write + Send>,
        is_tty: bool,
        mode: ConsoleMode,
        steps: &[(Step, &'static str)],
    ) -> Self {
        Self::with_targets(vec![(out, is_tty)], mode, steps)
    }

    /// Draw on several outputs at once; each `(writer, is_tty)` gets the panel
    /// (terminal, unless `mode` says lines) or one line per event.
    pub fn with_targets(
        outs: Vec<(Box<dyn Write + Send>, bool)>,
        mode: ConsoleMode,
        steps: &[(Step, &'static str)],
    ) -> Self {
        let targets = outs
            .into_iter()
            .map(|(out, is_tty)| Target {
                out,
                redraw: match mode {
                    ConsoleMode::Auto => {
                        is_tty && std::env::var("TERM").map_or(true, |t| t != "dumb")
                    }
                    ConsoleMode::Lines => false,
                    ConsoleMode::Redraw => true,
                },
                drawn_lines: 0,
            })
            .collect();
        Self {
            targets,
            paused: false,
            steps: steps
                .iter()
                .map(|&(s, d)| (s, d, StepState::Pending))
                .collect(),
            started: Instant::now(),
            server: String::new(),
            ip: None,
            hostname: None,
            progress: None,
            last_message: String::new(),
            last_progress_line: None,
            log_window: (Instant::now(), 0),
            log_held: 0,
            last_draw: None,
            dirty: false,
            detail: Vec::new(),
        }
    }

    /// The pipeline's steps with their titles, in order (its registry's).
    pub fn set_steps(&mut self, steps: &[(Step, &'static str)]) {
        self.steps = steps
            .iter()
            .map(|&(s, d)| (s, d, StepState::Pending))
            .collect();
        self.dirty = true;
    }

    /// The console on stdout, redrawing when stdout is a terminal.
    pub fn stdout(mode: ConsoleMode, steps: &[(Step, &'static str)]) -> Self {
        use std::io::IsTerminal;
        let tty = std::io::stdout().is_terminal();
        Self::new(Box::new(std::io::stdout()), tty, mode, steps)
    }

    /// Where a technician looks. When stdout is a terminal (the agent started
    /// by hand, or by an init that gave it /dev/console), that terminal. When
    /// it is not (a systemd service logging to the journal), every active
    /// kernel console named in `/sys/class/tty/console/active` (e.g. `tty0
    /// ttyS0`: the screen and the serial console), else stdout.
    pub fn system(mode: ConsoleMode, steps: &[(Step, &'static str)]) -> Self {
        use std::io::IsTerminal;
        if std::io::stdout().is_terminal() {
            return Self::stdout(mode, steps);
        }
        let active = std::fs::read_to_string("/sys/class/tty/console/active").unwrap_or_default();
        let mut outs: Vec<(Box<dyn Write + Send>, bool)> = Vec::new();
        for name in active.split_whitespace() {
            let path = format!("/dev/{name}");
            match std::fs::OpenOptions::new().write(true).open(&path) {
                Ok(f) => {
                    let tty = f.is_terminal();
                    outs.push((Box::new(f), tty));
                }
                Err(e) => tracing::warn!("console {path} not writable: {e}"),
            }
        }
        if outs.is_empty() {
            return Self::stdout(mode, steps);
        }
        Self::with_targets(outs, mode, steps)
    }

    pub fn set_server(&mut self, server: &str) {
        self.server = server.to_owned();
        self.draw_panel();
    }

    pub fn set_ip(&mut self, ip: Option<String>) {
        self.ip = ip;
        self.draw_panel();
    }

    pub fn set_hostname(&mut self, hostname: &str) {
        self.hostname = Some(hostname.to_owned());
        self.line(&format!("hostname {hostname}"));
        self.draw_panel();
    }

    /// Show a message that is not an event (e.g. waiting for the server).
    pub fn note(&mut self, message: &str) {
        self.last_message = message.to_owned();
        self.line(message);
        self.draw_panel();
    }

    pub fn event(&mut self, ev: &Event) {
        let state = match ev.kind {
            EventKind::Started | EventKind::Progress | EventKind::Log => StepState::Running,
            EventKind::Finished => StepState::Done,
            EventKind::Failed => StepState::Failed,
            EventKind::Unknown => return,
        };
        if let Some(s) = self.steps.iter_mut().find(|(s, _, _)| *s == ev.step) {
            s.2 = state;
        }
        self.progress = match (ev.kind, ev.progress) {
            (EventKind::Finished, _) => Some((ev.step, 1.0)),
            (_, Some(p)) => Some((ev.step, p.clamp(0.0, 1.0))),
            (EventKind::Started, None) => Some((ev.step, 0.0)),
            _ => self.progress,
        };
        if !ev.message.is_empty() {
            self.last_message = ev.message.clone();
        }
        // A step's state change is drawn at once; progress and output lines
        // at most every PANEL_INTERVAL (the ticker draws what is left over).
        if matches!(ev.kind, EventKind::Progress | EventKind::Log)
            && self.last_draw.is_some_and(|t| t.elapsed() < PANEL_INTERVAL)
        {
            self.dirty = true;
        } else {
            self.draw_panel();
        }
        if ev.kind == EventKind::Progress {
            let now = Instant::now();
            if matches!(self.last_progress_line, Some((s, t)) if s == ev.step && now - t < Duration::from_secs(1))
            {
                return;
            }
            self.last_progress_line = Some((ev.step, now));
        }
        if ev.kind == EventKind::Log {
            let now = Instant::now();
            if now - self.log_window.0 >= Duration::from_secs(1) {
                self.log_window = (now, 0);
            }
            if self.log_window.1 >= LOG_LINES_PER_SECOND {
                self.log_held += 1;
                return;
            }
            self.log_window.1 += 1;
            if self.log_held > 0 {
                let held = std::mem::take(&mut self.log_held);
                self.line(&format!("({held} more output line(s) on the server)"));
            }
        }
        let pct = ev
            .progress
            .map(|p| format!(" {:3.0}%", p * 100.0))
            .unwrap_or_default();
        self.line(&format!(
            "{:<9} {:<8}{pct} {}",
            ev.step.as_str(),
            ev.kind.as_str(),
            ev.message
        ));
    }

    /// Show `lines` under the panel (and once, line by line, where the
    /// console does not redraw) until the next call; empty clears them.
    pub fn set_detail(&mut self, lines: Vec<String>) {
        self.detail = lines;
        for l in self.detail.clone() {
            self.line(&l);
        }
        self.draw_panel();
    }

    /// Stop drawing, after one line saying why (a prompt is about to use the terminals).
    pub fn pause(&mut self, why: &str) {
        let line = format!("[landfall {}] {why}\n", self.elapsed());
        for t in &mut self.targets {
            let _ = t.out.write_all(line.as_bytes());
            let _ = t.out.flush();
            // The next panel starts fresh below whatever the prompt printed.
            t.drawn_lines = 0;
        }
        self.paused = true;
    }

    /// Draw again.
    pub fn resume(&mut self) {
        self.paused = false;
        self.draw_panel();
    }

    /// Called about once a second so the elapsed time moves on a terminal.
    pub fn tick(&mut self) {
        self.draw_panel();
    }

    fn elapsed(&self) -> String {
        let s = self.started.elapsed().as_secs();
        format!("{:02}:{:02}", s / 60, s % 60)
    }

    /// One line on every target that is not redrawing.
    fn line(&mut self, text: &str) {
        if self.paused {
            return;
        }
        let line = format!("[landfall {}] {text}\n", self.elapsed());
        for t in self.targets.iter_mut().filter(|t| !t.redraw) {
            let _ = t.out.write_all(line.as_bytes());
            let _ = t.out.flush();
        }
    }

    /// The panel as text lines (also used by tests).
    pub fn render(&self) -> Vec<String> {
        let mut lines = vec![format!(
            "landfall-agent {}  server {}  ip {}  host {}  {}",
            env!("CARGO_PKG_VERSION"),
            if self.server.is_empty() {
                "-"
            } else {
                &self.server
            },
            self.ip.as_deref().unwrap_or("-"),
            self.hostname.as_deref().unwrap_or("-"),
            self.elapsed()
        )];
        for (step, desc, state) in &self.steps {
            let mark = match state {
                StepState::Pending => "[    ]",
                StepState::Running => "[ >> ]",
                StepState::Done => "[ ok ]",
                StepState::Failed => "[FAIL]",
            };
            lines.push(format!("  {mark} {:<9} {desc}", step.as_str()));
        }
        let (step, p) = self.progress.unwrap_or((Step::Unknown, 0.0));
        const WIDTH: usize = 30;
        let filled = (p * WIDTH as f32).round() as usize;
        lines.push(format!(
            "  [{}{}] {:3.0}% {}",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            p * 100.0,
            if step == Step::Unknown {
                ""
            } else {
                step.as_str()
            }
        ));
        let msg: String = self.last_message.chars().take(200).collect();
        lines.push(format!("  {msg}"));
        lines.extend(
            self.detail
                .iter()
                .map(|l| format!("  {}", l.chars().take(200).collect::<String>())),
        );
        lines
    }

    /// Redraw the panel on every target that redraws.
    fn draw_panel(&mut self) {
        if self.paused || !self.targets.iter().any(|t| t.redraw) {
            return;
        }
        self.last_draw = Some(Instant::now());
        self.dirty = false;
        let lines = self.render();
        let mut body = String::new();
        for l in &lines {
            body.push_str(l);
            body.push_str("\x1b[K\n");
        }
        for t in self.targets.iter_mut().filter(|t| t.redraw) {
            let mut buf = String::new();
            if t.drawn_lines > 0 {
                // Up to the panel's first line, then clear to the end of the screen.
                buf.push_str(&format!("\x1b[{}F\x1b[J", t.drawn_lines));
            }
            buf.push_str(&body);
            t.drawn_lines = lines.len();
            let _ = t.out.write_all(buf.as_bytes());
            let _ = t.out.flush();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    impl Buf {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    fn ev(seq: u64, step: Step, kind: EventKind, progress: Option<f32>, msg: &str) -> Event {
        Event {
            seq,
            time: String::new(),
            step,
            kind,
            progress,
            message: msg.into(),
            data: None,
        }
    }

    const STEPS: &[(Step, &str)] = &[
        (Step::Detect, "Detect hardware"),
        (Step::Register, "Register"),
    ];

    #[test]
    fn a_flood_of_output_lines_is_held_back_and_counted() {
        let buf = Buf::default();
        let mut c = Console::new(Box::new(buf.clone()), false, ConsoleMode::Lines, STEPS);
        for i in 0..100 {
            c.event(&ev(
                i,
                Step::Detect,
                EventKind::Log,
                None,
                &format!("out {i}"),
            ));
        }
        let text = buf.text();
        assert_eq!(
            text.lines().count(),
            LOG_LINES_PER_SECOND as usize,
            "{text}"
        );
        assert!(text.contains("out 0") && !text.contains("out 99"), "{text}");
        std::thread::sleep(Duration::from_millis(1050));
        c.event(&ev(
            101,
            Step::Detect,
            EventKind::Log,
            None,
            "after a pause",
        ));
        c.event(&ev(102, Step::Detect, EventKind::Failed, None, "boom"));
        let text = buf.text();
        let held = 100 - LOG_LINES_PER_SECOND;
        assert!(
            text.contains(&format!("({held} more output line(s) on the server)")),
            "{text}"
        );
        assert!(
            text.contains("after a pause") && text.contains("boom"),
            "{text}"
        );
    }

    #[test]
    fn line_mode_prints_one_line_per_event_and_throttles_progress() {
        let buf = Buf::default();
        let mut c = Console::new(Box::new(buf.clone()), false, ConsoleMode::Auto, STEPS);
        c.event(&ev(1, Step::Detect, EventKind::Started, None, "detecting"));
        for i in 0..50 {
            c.event(&ev(
                2 + i,
                Step::Detect,
                EventKind::Progress,
                Some(i as f32 / 50.0),
                "p",
            ));
        }
        c.event(&ev(60, Step::Detect, EventKind::Finished, None, "2 disks"));
        let text = buf.text();
        assert!(!text.contains('\x1b'), "no escapes in line mode: {text:?}");
        assert_eq!(text.lines().count(), 3, "{text}");
        assert!(
            text.lines()
                .last()
                .unwrap()
                .contains("detect    finished 2 disks"),
            "{text}"
        );
    }

    #[test]
    fn redraw_mode_rewrites_the_panel_in_place() {
        let buf = Buf::default();
        let mut c = Console::new(Box::new(buf.clone()), true, ConsoleMode::Redraw, STEPS);
        c.set_server("http://s");
        c.event(&ev(1, Step::Detect, EventKind::Finished, None, "done"));
        c.event(&ev(
            2,
            Step::Register,
            EventKind::Progress,
            Some(0.5),
            "half",
        ));
        let panel = c.render();
        assert!(panel[1].contains("[ ok ] detect"), "{panel:?}");
        assert!(panel[2].contains("[ >> ] register"), "{panel:?}");
        assert!(panel[3].contains(" 50% register"), "{panel:?}");
        assert!(panel[3].contains(&format!("[{}{}]", "#".repeat(15), ".".repeat(15))));
        // Second and later draws move the cursor back over the previous panel;
        // the progress right after a state change waits for the ticker.
        assert_eq!(buf.text().matches("\x1b[5F\x1b[J").count(), 1);
        c.tick();
        assert_eq!(buf.text().matches("\x1b[5F\x1b[J").count(), 2);
        assert!(buf.text().ends_with(&format!("{}\x1b[K\n", panel[4])));
    }

    #[test]
    fn output_lines_do_not_each_redraw_the_panel() {
        let buf = Buf::default();
        let mut c = Console::new(Box::new(buf.clone()), true, ConsoleMode::Redraw, STEPS);
        c.event(&ev(1, Step::Detect, EventKind::Started, None, "detecting"));
        for i in 0..500 {
            c.event(&ev(
                2 + i,
                Step::Detect,
                EventKind::Log,
                None,
                &format!("line {i}"),
            ));
        }
        let draws = buf.text().matches("\x1b[K\n").count() / c.render().len();
        assert!(draws <= 2, "{draws} redraws for 500 lines");
        c.event(&ev(600, Step::Detect, EventKind::Finished, None, "ok"));
        assert!(
            buf.text().contains("[ ok ] detect"),
            "a state change is drawn at once"
        );
    }

    #[test]
    fn screen_and_serial_each_get_their_own_form() {
        let screen = Buf::default();
        let serial = Buf::default();
        let mut c = Console::with_targets(
            vec![
                (Box::new(screen.clone()), true),
                (Box::new(serial.clone()), false),
            ],
            ConsoleMode::Auto,
            STEPS,
        );
        c.event(&ev(1, Step::Detect, EventKind::Started, None, "detecting"));
        c.event(&ev(2, Step::Detect, EventKind::Finished, None, "1 disk"));
        let (screen, serial) = (screen.text(), serial.text());
        assert!(screen.contains("[ ok ] detect"), "{screen:?}");
        assert!(
            screen.contains("\x1b[5F"),
            "the screen is redrawn: {screen:?}"
        );
        assert!(!serial.contains('\x1b'), "{serial:?}");
        assert_eq!(serial.lines().count(), 2, "{serial}");
    }

    #[test]
    fn nothing_is_drawn_while_paused() {
        let buf = Buf::default();
        let mut c = Console::new(Box::new(buf.clone()), true, ConsoleMode::Redraw, STEPS);
        c.event(&ev(1, Step::Detect, EventKind::Started, None, "detecting"));
        c.pause("the bundle needs its passphrase");
        let before = buf.text();
        assert!(
            before.ends_with("the bundle needs its passphrase\n"),
            "{before:?}"
        );
        c.tick();
        c.event(&ev(2, Step::Detect, EventKind::Progress, Some(0.5), "half"));
        assert_eq!(buf.text(), before, "drawn while paused");
        c.resume();
        let after = &buf.text()[before.len()..];
        assert!(
            after.starts_with("landfall-agent"),
            "a fresh panel, no cursor move: {after:?}"
        );
    }
}
