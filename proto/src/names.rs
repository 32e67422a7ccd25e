//! Validation of every name that reaches an iPXE script, a path or a Nix file.

/// Why a name was refused, phrased so the message can name the field and the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameError(pub String);

impl std::fmt::Display for NameError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for NameError {}

/// An RFC 1123 host name label sequence: labels of 1-63 chars `[a-z0-9-]`, not
/// starting or ending with `-`, total at most 253. Upper case is refused so the
/// name means the same in Nix, DNS and paths.
pub fn check_hostname(name: &str) -> Result<(), NameError> {
    if name.is_empty() || name.len() > 253 {
        return Err(NameError(format!(
            "hostname {name:?} must be 1 to 253 characters long"
        )));
    }
    for label in name.split('.') {
        if label.is_empty() || label.len() > 63 {
            return Err(NameError(format!(
                "hostname {name:?}: each dot-separated label must be 1 to 63 characters"
            )));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(NameError(format!(
                "hostname {name:?} may only contain a-z, 0-9, '-' and '.' (RFC 1123, lower case)"
            )));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(NameError(format!(
                "hostname {name:?}: a label may not start or end with '-'"
            )));
        }
    }
    Ok(())
}

/// Role and layout names: `[a-z0-9-]`, 1-63 chars, starting with a letter or digit.
pub fn check_simple_name(kind: &str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(NameError(format!(
            "{kind} name {name:?} must be 1 to 63 characters of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

/// Normalise a MAC address to lower-case `aa:bb:cc:dd:ee:ff`; accepts `-` or `:`
/// separators and upper case. Returns `None` for anything else.
pub fn normalize_mac(mac: &str) -> Option<String> {
    let parts: Vec<&str> = mac.trim().split([':', '-']).collect();
    if parts.len() != 6 {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, p) in parts.iter().enumerate() {
        if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        if i > 0 {
            out.push(':');
        }
        out.push_str(&p.to_ascii_lowercase());
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostnames() {
        assert!(check_hostname("web-01").is_ok());
        assert!(check_hostname("a.b.c").is_ok());
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a..b",
            "a b",
            "a;reboot",
            &"x".repeat(64),
        ] {
            assert!(check_hostname(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn simple_names() {
        assert!(check_simple_name("role", "workstation").is_ok());
        let e = check_simple_name("role", "Work Station").unwrap_err();
        assert!(e.0.contains("role name"), "{e}");
        assert!(check_simple_name("role", "../etc").is_err());
    }

    #[test]
    fn macs() {
        assert_eq!(
            normalize_mac("52-54-00-AB-cd-01").as_deref(),
            Some("52:54:00:ab:cd:01")
        );
        assert_eq!(normalize_mac("52:54:00:ab:cd"), None);
        assert_eq!(normalize_mac("52:54:00:ab:cd:0g"), None);
    }
}
