//! Writing Nix source safely: every string that comes from the outside world
//! (device paths, module names, labels) goes through [`quote`].

/// A Nix double-quoted string literal for `s`: `\`, `"` and `${` are escaped,
/// so no value can end the string or start an interpolation.
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => out.push_str("\\$"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A Nix list of string literals: `[ "a" "b" ]`, or `[ ]`.
pub fn list<S: AsRef<str>>(items: &[S]) -> String {
    if items.is_empty() {
        return "[ ]".to_owned();
    }
    let body: Vec<String> = items.iter().map(|s| quote(s.as_ref())).collect();
    format!("[ {} ]", body.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_cannot_escape_the_string() {
        assert_eq!(quote("virtio_blk"), r#""virtio_blk""#);
        assert_eq!(quote(r#"a"b\c${x}$y"#), r#""a\"b\\c\${x}$y""#);
        assert_eq!(quote("l1\nl2"), r#""l1\nl2""#);
        assert_eq!(list::<&str>(&[]), "[ ]");
        assert_eq!(list(&["a", "b"]), r#"[ "a" "b" ]"#);
    }
}
