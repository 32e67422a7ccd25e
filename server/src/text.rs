//! Text that a client chose (a `mac=` query value, an agent's version, its
//! error messages, its inventory's DMI strings, event times) on its way to a
//! log line or the operator's terminal: control characters are escaped, so it
//! can neither forge a line (`\n`) nor drive the terminal (ESC, CSI, C1) nor
//! reorder what is shown (bidi overrides). The one helper for both: logs use
//! [`Untrusted`] as a tracing field (`mac = %Untrusted(raw)`), the CLI's text
//! view [`escape_controls`]. JSON output needs neither: serde escapes.

use std::borrow::Cow;
use std::fmt;

/// Whether `c` must not reach a log line or a terminal as it is: C0 (with
/// tab and line breaks), DEL, C1, the Unicode line and paragraph separators,
/// and the bidirectional formatting characters (LRM/RLM/ALM, the embeddings,
/// overrides and isolates: "Trojan Source", CVE-2021-42574).
pub fn is_unsafe(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200e}'
                | '\u{200f}'
                | '\u{2028}'
                | '\u{2029}'
                | '\u{202a}'..='\u{202e}'
                | '\u{2066}'..='\u{2069}'
        )
}

/// `s` with every [`is_unsafe`] character written as a Rust escape (`\n`,
/// `\u{1b}`); borrowed when there is none. A backslash stays as it is: the
/// text can spell `\u{1b}` itself, but that is four harmless characters.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_unsafe) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        push_escaped(&mut out, c);
    }
    Cow::Owned(out)
}

fn push_escaped(out: &mut String, c: char) {
    use fmt::Write;
    match c {
        '\n' => out.push_str("\\n"),
        '\r' => out.push_str("\\r"),
        '\t' => out.push_str("\\t"),
        c if is_unsafe(c) => {
            let _ = write!(out, "\\u{{{:x}}}", c as u32);
        }
        c => out.push(c),
    }
}

/// A client-supplied string in a log line: `tracing::warn!(mac = %Untrusted(raw), ...)`
/// writes it with [`escape_controls`].
#[derive(Debug, Clone, Copy)]
pub struct Untrusted<'a>(pub &'a str);

impl fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&escape_controls(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_and_bidi_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(escape_controls("ws-01 ok"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("a\nb\r\tc\u{1b}[2Jd\u{9b}e\u{202e}f\u{7f}"),
            "a\\nb\\r\\tc\\u{1b}[2Jd\\u{9b}e\\u{202e}f\\u{7f}"
        );
        assert_eq!(Untrusted("x\ny").to_string(), "x\\ny");
        // Non-ASCII text that is not a control stays readable.
        assert_eq!(escape_controls("Überhost ☃"), "Überhost ☃");
    }
}
