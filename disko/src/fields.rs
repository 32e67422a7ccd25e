//! Typed access to the rendered layout's JSON, with the field path of every
//! value in its errors, and unknown keys reported (a typo must not be
//! silently ignored).

use serde_json::{Map, Value};

use crate::LayoutError;

pub(crate) fn err<T>(path: &str, message: impl Into<String>) -> Result<T, LayoutError> {
    Err(LayoutError {
        path: path.to_owned(),
        message: message.into(),
    })
}

pub(crate) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an attribute set",
    }
}

/// A Nix attribute name as it appears in a path (quoted when needed).
pub(crate) fn attr(name: &str) -> String {
    if !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && !name.as_bytes()[0].is_ascii_digit()
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

pub(crate) fn as_obj<'a>(v: &'a Value, path: &str) -> Result<&'a Map<String, Value>, LayoutError> {
    v.as_object().ok_or_else(|| LayoutError {
        path: path.to_owned(),
        message: format!("expected an attribute set, found {}", kind(v)),
    })
}

/// Keys disko knows on every type and landfall ignores: its shell hooks.
pub(crate) const HOOKS: &[&str] = &[
    "preCreateHook",
    "postCreateHook",
    "preMountHook",
    "postMountHook",
];

/// Typed access to one attribute set, remembering which keys were read so
/// that unknown keys are reported.
pub(crate) struct Fields<'a> {
    pub(crate) obj: &'a Map<String, Value>,
    pub(crate) path: &'a str,
    known: Vec<&'static str>,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(v: &'a Value, path: &'a str) -> Result<Self, LayoutError> {
        Ok(Self {
            obj: as_obj(v, path)?,
            path,
            known: Vec::new(),
        })
    }
    /// The path of field `k`.
    pub(crate) fn p(&self, k: &str) -> String {
        format!("{}.{k}", self.path)
    }
    pub(crate) fn has(&self, k: &str) -> bool {
        self.obj.get(k).is_some_and(|v| !v.is_null())
    }
    pub(crate) fn get(&mut self, k: &'static str) -> Option<&'a Value> {
        self.known.push(k);
        self.obj.get(k).filter(|v| !v.is_null())
    }
    pub(crate) fn str(&mut self, k: &'static str) -> Result<Option<String>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(v) => err(&self.p(k), format!("expected a string, found {}", kind(v))),
        }
    }
    pub(crate) fn req_str(&mut self, k: &'static str, hint: &str) -> Result<String, LayoutError> {
        match self.str(k)? {
            Some(s) => Ok(s),
            None => err(&self.p(k), format!("is missing{hint}")),
        }
    }
    pub(crate) fn bool(&mut self, k: &'static str, default: bool) -> Result<bool, LayoutError> {
        match self.get(k) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(v) => err(
                &self.p(k),
                format!("expected true or false, found {}", kind(v)),
            ),
        }
    }
    pub(crate) fn int(&mut self, k: &'static str) -> Result<Option<i64>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(Value::Number(n)) if n.is_i64() => Ok(n.as_i64()),
            Some(v) => err(&self.p(k), format!("expected an integer, found {v}")),
        }
    }
    pub(crate) fn strings(&mut self, k: &'static str) -> Result<Option<Vec<String>>, LayoutError> {
        match self.get(k) {
            None => Ok(None),
            Some(v) => strings_of(v, &self.p(k)).map(Some),
        }
    }
    /// An attribute set of strings (zfs `options`, `rootFsOptions`), sorted by name.
    pub(crate) fn str_map(
        &mut self,
        k: &'static str,
    ) -> Result<std::collections::BTreeMap<String, String>, LayoutError> {
        let Some(v) = self.get(k) else {
            return Ok(Default::default());
        };
        let p = self.p(k);
        as_obj(v, &p)?
            .iter()
            .map(|(n, x)| match x {
                Value::String(s) => Ok((n.clone(), s.clone())),
                x => err(
                    &format!("{p}.{}", attr(n)),
                    format!("expected a string, found {}", kind(x)),
                ),
            })
            .collect()
    }
    /// Keys disko knows but landfall ignores (hooks, image settings, internals).
    pub(crate) fn ignore(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }
    /// Every key not read is an error (a typo would otherwise be silently ignored).
    pub(crate) fn done(self) -> Result<(), LayoutError> {
        for k in self.obj.keys() {
            if !self.known.contains(&k.as_str()) && !k.starts_with('_') {
                return err(
                    &format!("{}.{}", self.path, attr(k)),
                    format!(
                        "unknown or unsupported option (known here: {})",
                        self.known
                            .iter()
                            .filter(|k| !HOOKS.contains(k))
                            .copied()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
        }
        Ok(())
    }
}

/// A list of strings.
pub(crate) fn strings_of(v: &Value, path: &str) -> Result<Vec<String>, LayoutError> {
    match v {
        Value::Array(a) => a
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                v => err(
                    &format!("{path}.{i}"),
                    format!("expected a string, found {}", kind(v)),
                ),
            })
            .collect(),
        v => err(
            path,
            format!("expected a list of strings, found {}", kind(v)),
        ),
    }
}
