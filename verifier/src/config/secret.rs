//! Secrets by reference (`env:NAME` or `file:PATH`) and a value type that never prints itself.

use std::fmt;
use std::path::PathBuf;

/// Minimum length of a secret that must carry at least 32 random bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Where a secret comes from. The reference itself is not secret and may be logged.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretRef {
    Env(String),
    File(PathBuf),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SecretError {
    #[error(
        "not a secret reference (hint: write env:NAME or file:PATH; secrets are never inline)"
    )]
    Inline,
    #[error("empty {0} reference (hint: write env:NAME or file:PATH)")]
    EmptyRef(&'static str),
    #[error("environment variable {0} is not set (hint: export {0}=...)")]
    EnvMissing(String),
    #[error("environment variable {0} is not valid UTF-8")]
    EnvNotUnicode(String),
    #[error("cannot read secret file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("secret from {source_ref} is empty")]
    Empty { source_ref: String },
    #[error("secret from {source_ref} is {len} bytes, need at least {min} (hint: generate one with `openssl rand -hex 32`)")]
    TooShort {
        source_ref: String,
        len: usize,
        min: usize,
    },
}

impl SecretRef {
    pub fn parse(text: &str) -> Result<Self, SecretError> {
        if let Some(name) = text.strip_prefix("env:") {
            let name = name.trim();
            if name.is_empty() {
                return Err(SecretError::EmptyRef("env:"));
            }
            Ok(Self::Env(name.to_owned()))
        } else if let Some(path) = text.strip_prefix("file:") {
            let path = path.trim();
            if path.is_empty() {
                return Err(SecretError::EmptyRef("file:"));
            }
            Ok(Self::File(PathBuf::from(path)))
        } else {
            Err(SecretError::Inline)
        }
    }

    /// Reads the secret; file contents lose one trailing newline. `min_len` 0 means "non-empty".
    pub fn resolve(&self, min_len: usize) -> Result<Secret, SecretError> {
        let value = match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(v) => v,
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            Self::File(path) => {
                let mut v = std::fs::read_to_string(path).map_err(|e| SecretError::File {
                    path: path.display().to_string(),
                    reason: e.to_string(),
                })?;
                if v.ends_with('\n') {
                    v.pop();
                    if v.ends_with('\r') {
                        v.pop();
                    }
                }
                v
            }
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                source_ref: self.to_string(),
            });
        }
        if value.len() < min_len {
            return Err(SecretError::TooShort {
                source_ref: self.to_string(),
                len: value.len(),
                min: min_len,
            });
        }
        Ok(Secret(value))
    }

    /// Reads raw bytes (binary files such as LND's `invoice.macaroon` or a DER certificate);
    /// an environment variable gives its UTF-8 bytes.
    pub fn resolve_bytes(&self) -> Result<Vec<u8>, SecretError> {
        let value = match self {
            Self::Env(name) => match std::env::var(name) {
                Ok(v) => v.into_bytes(),
                Err(std::env::VarError::NotPresent) => {
                    return Err(SecretError::EnvMissing(name.clone()))
                }
                Err(std::env::VarError::NotUnicode(_)) => {
                    return Err(SecretError::EnvNotUnicode(name.clone()))
                }
            },
            Self::File(path) => std::fs::read(path).map_err(|e| SecretError::File {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?,
        };
        if value.is_empty() {
            return Err(SecretError::Empty {
                source_ref: self.to_string(),
            });
        }
        Ok(value)
    }
}

impl fmt::Display for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Env(n) => write!(f, "env:{n}"),
            Self::File(p) => write!(f, "file:{}", p.display()),
        }
    }
}

/// A resolved secret. `Debug`/`Display` are redacted.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    #[cfg(test)]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself: only for building credentials, never for logs.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_refs() {
        assert_eq!(SecretRef::parse("env:X"), Ok(SecretRef::Env("X".into())));
        assert_eq!(
            SecretRef::parse("file:/run/s"),
            Ok(SecretRef::File("/run/s".into()))
        );
        assert_eq!(SecretRef::parse("hunter2"), Err(SecretError::Inline));
        assert_eq!(SecretRef::parse("env:"), Err(SecretError::EmptyRef("env:")));
    }

    #[test]
    fn resolve_file_and_length() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        std::fs::write(&path, "short\n").expect("write");
        let r = SecretRef::File(path.clone());
        assert_eq!(r.resolve(0).expect("ok").expose(), "short");
        assert!(matches!(
            r.resolve(MIN_SECRET_BYTES),
            Err(SecretError::TooShort { len: 5, .. })
        ));
        let missing = SecretRef::File(dir.path().join("nope"));
        assert!(matches!(missing.resolve(0), Err(SecretError::File { .. })));
        let env = SecretRef::Env("TOLLWAY_TEST_SURELY_UNSET_VAR".into());
        assert!(matches!(env.resolve(0), Err(SecretError::EnvMissing(_))));
    }

    #[test]
    fn resolve_binary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m");
        std::fs::write(&path, [0x02, 0x01, 0xff, 0x00]).expect("write");
        let r = SecretRef::File(path);
        assert_eq!(
            r.resolve_bytes().expect("bytes"),
            vec![0x02, 0x01, 0xff, 0x00]
        );
        let empty = dir.path().join("e");
        std::fs::write(&empty, []).expect("write");
        assert!(matches!(
            SecretRef::File(empty).resolve_bytes(),
            Err(SecretError::Empty { .. })
        ));
    }

    #[test]
    fn redacted() {
        let s = Secret::new("topsecret");
        assert_eq!(format!("{s:?} {s}"), "Secret(<redacted>) <redacted>");
    }
}
