//! Secret configuration values (passwords, keys): never printed, zeroed on drop, and readable
//! from a file (`*_file` keys, for Kubernetes Secrets mounted as files) or from the environment
//! (`SLUICE_…` overrides, like every key).

use std::fmt;
use std::path::{Path, PathBuf};

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::Problems;

/// A secret string (password, API key, librdkafka property value): `Debug` prints `***`, the
/// value is zeroed when dropped (`secrecy::SecretString`). Empty means unset.
#[derive(Clone, Default)]
pub struct Secret(SecretString);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(SecretString::from(value.into()))
    }

    /// The secret value; use only to hand it to a client.
    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }

    /// Whether no value is set.
    pub fn is_empty(&self) -> bool {
        self.expose().is_empty()
    }

    /// `value` itself, or the content of `file` when one is given (without the trailing newline
    /// that `echo` and editors add). Read when a client is built, so a restart picks up a rotated
    /// Secret.
    pub fn resolve(value: &Secret, file: Option<&Path>) -> Result<Secret, SecretFileError> {
        match file {
            None => Ok(value.clone()),
            Some(path) => read_secret_file(path),
        }
    }
}

/// A `*_file` could not be read.
#[derive(Debug, thiserror::Error)]
#[error("cannot read secret file {path}: {source}")]
pub struct SecretFileError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error (never the content).
    pub source: std::io::Error,
}

/// Reads a secret file, trimming one trailing `\n` / `\r\n`.
pub fn read_secret_file(path: &Path) -> Result<Secret, SecretFileError> {
    let mut text = std::fs::read_to_string(path).map_err(|source| SecretFileError { path: path.to_owned(), source })?;
    if text.ends_with('\n') {
        text.pop();
        if text.ends_with('\r') {
            text.pop();
        }
    }
    Ok(Secret::new(text))
}

/// Validates a value/file pair: not both set; the file readable. `required` adds "one of them
/// must be set". Keys are reported as `key` and `key_file`.
pub fn validate_pair(p: &mut Problems, key: &str, value_set: bool, file: Option<&Path>, required: Option<&str>) {
    if value_set && file.is_some() {
        p.push(key, format!("set either `{key}` or `{key}_file`, not both"));
    }
    if let Some(path) = file {
        validate_readable(p, &format!("{key}_file"), path);
    }
    if let Some(why) = required
        && !value_set
        && file.is_none()
    {
        p.push(key, format!("is required {why} (or `{key}_file`)"));
    }
}

/// Reports `key` when `path` is not a readable file.
pub fn validate_readable(p: &mut Problems, key: &str, path: &Path) {
    match std::fs::File::open(path) {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => {}
        Ok(_) => p.push(key, format!("{} is not a regular file", path.display())),
        Err(err) => p.push(key, format!("cannot read {}: {err}", path.display())),
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret::new(value)
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret::new(value)
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.expose() == other.expose()
    }
}

impl Eq for Secret {}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // Serialised only to learn the configuration's shape (defaults are empty).
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // Accept numbers and booleans too: `SLUICE_…=12345` overrides arrive as YAML scalars.
        // Errors never quote the value.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Secret::new(s)),
            serde_json::Value::Number(n) => Ok(Secret::new(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Secret::new(b.to_string())),
            serde_json::Value::Null => Ok(Secret::default()),
            _ => Err(serde::de::Error::custom("expected a string")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s:?}"), "\"***\"");
        assert_eq!(format!("{:?}", Secret::default()), "\"\"");
    }

    #[test]
    fn file_wins_and_loses_one_trailing_newline() {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(b"s3cret \r\n").unwrap();
        let s = Secret::resolve(&Secret::default(), Some(f.path())).unwrap();
        assert_eq!(s.expose(), "s3cret ");
        let err = Secret::resolve(&Secret::default(), Some(Path::new("/nonexistent/pw"))).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/pw"), "{err}");
    }

    #[test]
    fn pairs_are_validated() {
        let mut p = Problems::default();
        validate_pair(&mut p, "password", true, Some(Path::new("/nonexistent/pw")), None);
        validate_pair(&mut p, "username", false, None, Some("with SASL"));
        let problems: Vec<String> = p.into_vec().iter().map(ToString::to_string).collect();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].contains("not both"));
        assert!(problems[1].starts_with("password_file: cannot read /nonexistent/pw"));
        assert!(problems[2].starts_with("username: is required with SASL"));
    }
}
