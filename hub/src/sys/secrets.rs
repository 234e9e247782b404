//! Secrets at rest: the credential key and AES-256-GCM sealing of vCenter passwords and of S3
//! repositories' secret access keys.
//!
//! A sealed secret is `nonce (12 bytes) || ciphertext || tag (16 bytes)`, with a fresh random
//! nonce for every sealing and the owner (a credential's id, a repository's id) as associated
//! data, so a sealed secret copied onto another row does not open.

use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Key, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::Deserialize;

use crate::error::{Error, Result};

pub const KEY_FILE: &str = "credential-key";
/// Where a rotation writes the new key before the catalog is re-encrypted.
pub const NEW_KEY_FILE: &str = "credential-key.new";
pub const KEY_ENV: &str = "SENDENSE_HUB_CREDENTIAL_KEY";
pub const NEW_KEY_ENV: &str = "SENDENSE_HUB_NEW_CREDENTIAL_KEY";
const NONCE_LEN: usize = 12;

/// A string that must never be shown: `Debug` prints `***`, there is no `Serialize`, and a
/// value of the wrong type is refused without repeating it.
#[derive(Clone, Default)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(de: D) -> std::result::Result<Secret, D::Error> {
        // serde's own type errors quote the value they got; this one must not.
        match serde_json::Value::deserialize(de)? {
            serde_json::Value::String(s) => Ok(Secret(s)),
            _ => Err(serde::de::Error::custom("a secret must be a JSON string")),
        }
    }
}

/// The 32-byte key that seals credential secrets.
#[derive(Clone)]
pub struct CredentialKey(Key<Aes256Gcm>);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(***)")
    }
}

/// Why a sealed secret did not open.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("the sealed value is too short")]
    Truncated,
    #[error("wrong key, or the sealed value was changed or belongs to another credential")]
    WrongKey,
    #[error("the opened secret is not UTF-8")]
    NotText,
}

impl CredentialKey {
    pub fn generate() -> CredentialKey {
        CredentialKey(Aes256Gcm::generate_key(OsRng))
    }

    /// Standard base64 of exactly 32 bytes (what `SENDENSE_HUB_CREDENTIAL_KEY` and the key file
    /// hold; `openssl rand -base64 32` makes one).
    pub fn from_base64(text: &str, origin: &str) -> Result<CredentialKey> {
        let bytes = BASE64.decode(text.trim()).map_err(|_| {
            Error::Config(format!(
                "{origin}: the credential key is not base64 (make one with `openssl rand -base64 32`)"
            ))
        })?;
        if bytes.len() != 32 {
            return Err(Error::Config(format!(
                "{origin}: the credential key must be 32 bytes, it has {}",
                bytes.len()
            )));
        }
        Ok(CredentialKey(*Key::<Aes256Gcm>::from_slice(&bytes)))
    }

    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0.as_slice())
    }

    pub fn seal(&self, credential_id: i64, plaintext: &str) -> Vec<u8> {
        self.seal_as(&associated_data(credential_id), plaintext)
    }

    pub fn open(
        &self,
        credential_id: i64,
        sealed: &[u8],
    ) -> std::result::Result<Secret, OpenError> {
        self.open_as(&associated_data(credential_id), sealed)
    }

    /// An S3 repository's secret access key, bound to the repository's id.
    pub fn seal_repository_secret(&self, repository_id: &str, plaintext: &str) -> Vec<u8> {
        self.seal_as(&repository_data(repository_id), plaintext)
    }

    pub fn open_repository_secret(
        &self,
        repository_id: &str,
        sealed: &[u8],
    ) -> std::result::Result<Secret, OpenError> {
        self.open_as(&repository_data(repository_id), sealed)
    }

    fn seal_as(&self, aad: &[u8], plaintext: &str) -> Vec<u8> {
        let cipher = Aes256Gcm::new(&self.0);
        let nonce = Aes256Gcm::generate_nonce(&mut OsRng);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad,
                },
            )
            // Encryption fails only for inputs of gigabytes; a password is not one.
            .expect("AES-GCM encryption of a short secret");
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    fn open_as(&self, aad: &[u8], sealed: &[u8]) -> std::result::Result<Secret, OpenError> {
        if sealed.len() < NONCE_LEN + 16 {
            return Err(OpenError::Truncated);
        }
        let (nonce, body) = sealed.split_at(NONCE_LEN);
        let plain = Aes256Gcm::new(&self.0)
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad })
            .map_err(|_| OpenError::WrongKey)?;
        String::from_utf8(plain)
            .map(Secret)
            .map_err(|_| OpenError::NotText)
    }
}

fn associated_data(credential_id: i64) -> Vec<u8> {
    format!("sendense-hub vmware-credential {credential_id}").into_bytes()
}

fn repository_data(repository_id: &str) -> Vec<u8> {
    format!("sendense-hub repository-secret {repository_id}").into_bytes()
}

/// The key from `SENDENSE_HUB_CREDENTIAL_KEY` when given, else from `<data_dir>/credential-key`,
/// which is created (mode 0600) when it does not exist yet and no credential is sealed
/// (`sealed` is how many the catalog holds): a new key would open none of them, so a lost file
/// is an error, never silently replaced.
pub fn load_or_create_key(
    data_dir: &Path,
    from_env: Option<&Secret>,
    sealed: usize,
) -> Result<CredentialKey> {
    if let Some(text) = from_env {
        return CredentialKey::from_base64(text.expose(), KEY_ENV);
    }
    let path = data_dir.join(KEY_FILE);
    if let Some(key) = read_key_file(&path)? {
        return Ok(key);
    }
    if sealed > 0 {
        return Err(Error::Config(format!(
            "{} does not exist, and the catalog holds {sealed} VMware credential(s) sealed with \
             the key it held: put that file back (mode 0600), or give the key in {KEY_ENV}; a new \
             key would open none of them",
            path.display()
        )));
    }
    let key = CredentialKey::generate();
    write_key_file(&path, &key)?;
    tracing::info!(path = %path.display(), "created the credential key file");
    Ok(key)
}

/// `Ok(None)` when the file does not exist. Like the token file, a key file readable by group
/// or others is refused: whoever reads it reads every vCenter password.
pub fn read_key_file(path: &Path) -> Result<Option<CredentialKey>> {
    let shown = path.display();
    let mut file = match std::fs::File::open(path) {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("reading {shown}"))(e)),
    };
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
    CredentialKey::from_base64(&text, &shown.to_string()).map(Some)
}

/// Write a new key file, mode 0600 from its creation, synced; fails if the file exists.
pub fn write_key_file(path: &Path, key: &CredentialKey) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(Error::io(format!("creating {}", path.display())))?;
    file.write_all(format!("{}\n", key.to_base64()).as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(Error::io(format!("writing {}", path.display())))
}

pub fn key_file(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn seal_and_open() {
        let key = CredentialKey::generate();
        let a = key.seal(7, "p@ss wörd");
        let b = key.seal(7, "p@ss wörd");
        assert_ne!(a, b, "fresh nonce per sealing");
        assert!(!a.windows(4).any(|w| w == b"p@ss"));
        assert_eq!(key.open(7, &a).unwrap().expose(), "p@ss wörd");
        assert!(matches!(key.open(8, &a), Err(OpenError::WrongKey)));
        assert!(matches!(
            CredentialKey::generate().open(7, &a),
            Err(OpenError::WrongKey)
        ));
        assert!(matches!(key.open(7, &a[..20]), Err(OpenError::Truncated)));
        let mut changed = a.clone();
        changed[15] ^= 1;
        assert!(matches!(key.open(7, &changed), Err(OpenError::WrongKey)));
    }

    #[test]
    fn key_file_created_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = load_or_create_key(dir.path(), None, 0).unwrap();
        let k2 = load_or_create_key(dir.path(), None, 1).unwrap();
        assert_eq!(k1.to_base64(), k2.to_base64());
        let mode = std::fs::metadata(key_file(dir.path()))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let env = Secret::new(CredentialKey::generate().to_base64());
        let k3 = load_or_create_key(dir.path(), Some(&env), 1).unwrap();
        assert_eq!(k3.to_base64(), env.expose());
        let short = Secret::new(BASE64.encode([1u8; 16]));
        let err = load_or_create_key(dir.path(), Some(&short), 0).unwrap_err();
        assert!(err.to_string().contains("32 bytes"), "{err}");
        assert!(load_or_create_key(dir.path(), Some(&Secret::new("not base64!")), 0).is_err());
    }

    #[test]
    fn a_lost_key_file_is_not_replaced_and_a_shared_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let err = load_or_create_key(dir.path(), None, 2).unwrap_err();
        assert!(err.to_string().contains("does not exist"), "{err}");
        assert!(!key_file(dir.path()).exists());
        load_or_create_key(dir.path(), None, 0).unwrap();
        let path = key_file(dir.path());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        let err = load_or_create_key(dir.path(), None, 2).unwrap_err();
        let fix = format!("run `chmod 600 {}`", path.display());
        assert!(err.to_string().contains(&fix), "{err}");
    }

    #[test]
    fn secrets_do_not_show() {
        let s: Secret = serde_json::from_str("\"hunter2\"").unwrap();
        assert_eq!(format!("{s:?}"), "***");
        let err = serde_json::from_str::<Secret>("12345").unwrap_err();
        assert!(!err.to_string().contains("12345"), "{err}");
    }
}
