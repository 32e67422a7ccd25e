//! [`SecretBytes`]: a secret value in memory. Zeroized on drop; `Debug` and
//! `Display` print `[redacted]`; no `Clone`, no `Serialize`.

use std::fmt;

use zeroize::Zeroizing;

/// Bytes that must never be shown or logged. The buffer is overwritten with
/// zeros when dropped. Read it with [`SecretBytes::expose`] only where it is
/// handed to its one consumer (a file, a request body).
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// Take a `String` without copying it (its buffer becomes ours and is zeroized).
    pub fn from_string(s: String) -> Self {
        Self::new(s.into_bytes())
    }

    /// The secret. Do not format, log or keep a copy of it.
    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// The secret as UTF-8 (Vault tokens and ids are), or `None`.
    pub fn expose_str(&self) -> Option<&str> {
        std::str::from_utf8(&self.0).ok()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Deserialize from a JSON string (taken without a copy); numbers and
/// booleans become their decimal/`true`/`false` text, as Vault's KV shows them.
impl<'de> serde::Deserialize<'de> for SecretBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = SecretBytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string (secret values are strings)")
            }
            fn visit_string<E: serde::de::Error>(self, v: String) -> Result<SecretBytes, E> {
                Ok(SecretBytes::from_string(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<SecretBytes, E> {
                Ok(SecretBytes::new(v.as_bytes().to_vec()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<SecretBytes, E> {
                Ok(SecretBytes::from_string(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<SecretBytes, E> {
                Ok(SecretBytes::from_string(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<SecretBytes, E> {
                Ok(SecretBytes::from_string(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_and_parses() {
        let s: SecretBytes = serde_json::from_str(r#""CANARY-hunter2""#).unwrap();
        assert_eq!(s.expose(), b"CANARY-hunter2");
        let shown = format!("{s} {s:?} {:?}", Some(&s));
        assert!(!shown.contains("CANARY"), "{shown}");
        let n: SecretBytes = serde_json::from_str("42").unwrap();
        assert_eq!(n.expose_str(), Some("42"));
        assert!(serde_json::from_str::<SecretBytes>("{}").is_err());
    }
}
