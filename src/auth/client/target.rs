//! Where the authorization service listens: `unix:/path` or `host:port`.

use std::fmt;
use std::net::Ipv6Addr;
use std::path::PathBuf;

use thiserror::Error;

/// `sun_path` is 108 bytes including the terminating NUL.
pub(super) const MAX_UNIX_PATH_BYTES: usize = 107;

/// Where the authorization service listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    Unix(PathBuf),
    /// `host` is a name or an IP literal, IPv6 without brackets.
    Tcp {
        host: String,
        port: u16,
    },
}

/// Why a `host` value names no target; each carries the value as written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TargetError {
    #[error("{0:?}: expected unix:/path/to/socket")]
    EmptyUnixPath(String),
    #[error("{0:?}: a socket path must be at most {MAX_UNIX_PATH_BYTES} bytes, without NUL")]
    UnixPath(String),
    #[error("{0:?}: expected unix:/path/to/socket or host:port, not a URL")]
    Url(String),
    #[error("{0:?}: expected unix:/path/to/socket or host:port")]
    NoPort(String),
    #[error("{0:?}: port must be 1-65535")]
    Port(String),
    #[error("{0:?}: bad IPv6 literal")]
    Ipv6(String),
    #[error("{0:?}: expected unix:/path/to/socket or host:port; IPv6 goes in brackets")]
    Host(String),
}

impl Target {
    /// Parses `unix:/path/to/socket` or `host:port` (`[v6]:port` for IPv6).
    pub fn parse(s: &str) -> Result<Target, TargetError> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(TargetError::EmptyUnixPath(s.into()));
            }
            if path.len() > MAX_UNIX_PATH_BYTES || path.contains('\0') {
                return Err(TargetError::UnixPath(s.into()));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        if s.contains("://") {
            return Err(TargetError::Url(s.into()));
        }
        let (host, port) = s
            .rsplit_once(':')
            .ok_or_else(|| TargetError::NoPort(s.into()))?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => p,
            _ => return Err(TargetError::Port(s.into())),
        };
        let host = if let Some(inner) = host.strip_prefix('[') {
            let ip = inner
                .strip_suffix(']')
                .and_then(|h| h.parse::<Ipv6Addr>().ok());
            ip.ok_or_else(|| TargetError::Ipv6(s.into()))?.to_string()
        } else {
            let valid = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_';
            if host.is_empty() || !host.bytes().all(valid) {
                return Err(TargetError::Host(s.into()));
            }
            host.to_string()
        };
        Ok(Target::Tcp { host, port })
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Unix(path) => write!(f, "unix:{}", path.display()),
            Target::Tcp { host, port } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Target::Tcp { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

#[cfg(test)]
mod tests;
