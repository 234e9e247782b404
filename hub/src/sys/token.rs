//! The API token: configured, or kept in `<data_dir>/api-token` (mode 0600, created at first start).

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

use rand::Rng;

use crate::error::{Error, Result};

pub const TOKEN_FILE: &str = "api-token";

/// Shorter tokens are refused: 32 bytes of hex is 128 bits.
pub const MIN_TOKEN_BYTES: usize = 32;
/// Where a configured token comes from, for messages.
pub(crate) const CONFIGURED: &str =
    "the configured api_token (SENDENSE_HUB_API_TOKEN or api_token in the config file)";

pub fn load_or_create(data_dir: &Path, configured: Option<&str>) -> Result<String> {
    if let Some(token) = configured {
        return check_length(token.trim(), CONFIGURED);
    }
    let path = data_dir.join(TOKEN_FILE);
    match std::fs::File::open(&path) {
        Ok(file) => return read_token_file(&path, file),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("reading {}", path.display()))(e)),
    }
    let bytes: [u8; 32] = rand::rng().random();
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    file.write_all(format!("{token}\n").as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io(format!("writing {}", path.display())))?;
    tracing::info!(path = %path.display(), "created API token file");
    Ok(token)
}

/// The token in an existing file, which only its owner may read.
fn read_token_file(path: &Path, mut file: std::fs::File) -> Result<String> {
    let shown = path.display();
    let mode = file
        .metadata()
        .map_err(Error::io(format!("reading {shown}")))?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        return Err(Error::Config(format!(
            "{shown} is readable by group or others (mode {:04o}); run `chmod 600 {shown}`",
            mode & 0o7777
        )));
    }
    let mut text = String::new();
    file.read_to_string(&mut text)
        .map_err(Error::io(format!("reading {shown}")))?;
    check_length(text.trim(), &shown.to_string())
}

pub(crate) fn check_length(token: &str, from: &str) -> Result<String> {
    if token.len() < MIN_TOKEN_BYTES {
        return Err(Error::Config(format!(
            "the API token in {from} has {} bytes; at least {MIN_TOKEN_BYTES} are required (make one with `openssl rand -hex 32`)",
            token.len()
        )));
    }
    Ok(token.to_owned())
}

/// Compare without an early exit, so the time taken does not tell how much of a guess was right.
pub fn matches(expected: &str, given: &str) -> bool {
    let (a, b) = (expected.as_bytes(), given.as_bytes());
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let t1 = load_or_create(dir.path(), None).unwrap();
        let t2 = load_or_create(dir.path(), None).unwrap();
        assert_eq!(t1, t2);
        assert_eq!(t1.len(), 64);
        let mode = std::fs::metadata(dir.path().join(TOKEN_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let long = "configured-token-0123456789abcdef";
        assert_eq!(load_or_create(dir.path(), Some(long)).unwrap(), long);
    }

    #[test]
    fn short_tokens_and_readable_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create(dir.path(), Some("x"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("at least 32"), "{err}");
        let path = dir.path().join(TOKEN_FILE);
        std::fs::write(&path, "short\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let err = load_or_create(dir.path(), None).unwrap_err().to_string();
        assert!(
            err.contains("5 bytes") && err.contains("openssl rand"),
            "{err}"
        );
        std::fs::write(&path, "a".repeat(64)).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path(), None).unwrap_err().to_string();
        assert!(err.contains("chmod 600") && err.contains("0644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o400)).unwrap();
        assert_eq!(load_or_create(dir.path(), None).unwrap(), "a".repeat(64));
    }

    #[test]
    fn comparison() {
        assert!(matches("abc", "abc"));
        assert!(!matches("abc", "abd"));
        assert!(!matches("abc", "ab"));
        assert!(!matches("abc", "abcd"));
    }
}
