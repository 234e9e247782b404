//! vCenter credentials: create, read, update, delete, the default one, the decrypted login the SNA
//! calls need, and the key rotation. The password is write-only: no view, log line or error
//! carries it, and the catalog holds it only sealed ([`crate::sys::secrets`]).

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::catalog::{Catalog, Credential, CredentialFields, fmt_time};
use crate::error::{Error, Result};
use crate::state::Hub;
use crate::sys::secrets::{self, CredentialKey, Secret};

const MAX_FIELD: usize = 255;

/// The body of `POST` and `PUT /api/v1/vmware-credentials[/{id}]` (Sendense's fields). On
/// `PUT` every field is optional and a missing one keeps its value (the password too).
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
pub struct CredentialRequest {
    /// 1 to 255 bytes, not only spaces; unique. `name` is read as the same field.
    #[serde(default, alias = "name")]
    pub credential_name: Option<String>,
    #[serde(default)]
    pub vcenter_host: Option<String>,
    #[serde(default)]
    pub username: Option<String>,
    /// Write-only: no answer ever carries it. 1 to 1024 bytes.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Secret>,
    #[serde(default)]
    pub datacenter: Option<String>,
    #[serde(default)]
    pub is_active: Option<bool>,
    #[serde(default)]
    pub is_default: Option<bool>,
}

/// A credential as the API shows it: never the password.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CredentialView {
    pub id: i64,
    pub credential_name: String,
    /// The old hub's name for `credential_name`.
    pub name: String,
    pub vcenter_host: String,
    pub username: String,
    pub datacenter: String,
    pub is_active: bool,
    pub is_default: bool,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

impl From<&Credential> for CredentialView {
    fn from(c: &Credential) -> Self {
        CredentialView {
            id: c.id,
            credential_name: c.credential_name.clone(),
            name: c.credential_name.clone(),
            vcenter_host: c.vcenter_host.clone(),
            username: c.username.clone(),
            datacenter: c.datacenter.clone(),
            is_active: c.is_active,
            is_default: c.is_default,
            created_at: fmt_time(c.created_at),
            updated_at: fmt_time(c.updated_at),
        }
    }
}

/// What an SNA call needs: the credential with its password opened.
#[derive(Debug, Clone)]
pub struct VcenterLogin {
    pub credential_id: i64,
    pub vcenter_host: String,
    pub username: String,
    pub password: Secret,
    pub datacenter: String,
}

fn text_field(name: &str, value: Option<String>, current: Option<&str>) -> Result<String> {
    let value = match (value, current) {
        (Some(v), _) => v.trim().to_owned(),
        (None, Some(c)) => return Ok(c.to_owned()),
        (None, None) => return Err(Error::Invalid(format!("{name} is required"))),
    };
    if value.is_empty() || value.len() > MAX_FIELD {
        return Err(Error::Invalid(format!(
            "{name} must have 1 to {MAX_FIELD} bytes"
        )));
    }
    Ok(value)
}

/// Merge a request over the current values (none on create) and check it.
fn fields(req: &CredentialRequest, current: Option<&Credential>) -> Result<CredentialFields> {
    let datacenter = req
        .datacenter
        .clone()
        .or_else(|| current.map(|c| c.datacenter.clone()))
        .unwrap_or_default();
    if datacenter.len() > MAX_FIELD {
        return Err(Error::Invalid(format!(
            "datacenter must have at most {MAX_FIELD} bytes"
        )));
    }
    Ok(CredentialFields {
        credential_name: text_field(
            "credential_name",
            req.credential_name.clone(),
            current.map(|c| c.credential_name.as_str()),
        )?,
        vcenter_host: text_field(
            "vcenter_host",
            req.vcenter_host.clone(),
            current.map(|c| c.vcenter_host.as_str()),
        )?,
        username: text_field(
            "username",
            req.username.clone(),
            current.map(|c| c.username.as_str()),
        )?,
        datacenter: datacenter.trim().to_owned(),
        is_active: req
            .is_active
            .or(current.map(|c| c.is_active))
            .unwrap_or(true),
        is_default: req
            .is_default
            .or(current.map(|c| c.is_default))
            .unwrap_or(false),
    })
}

fn check_password(password: &Secret) -> Result<()> {
    if password.is_empty() || password.expose().len() > 1024 {
        return Err(Error::Invalid("password must have 1 to 1024 bytes".into()));
    }
    Ok(())
}

impl Hub {
    pub(crate) fn key(&self) -> Result<&CredentialKey> {
        self.credential_key.as_ref().map_err(|reason| {
            Error::Unavailable(format!(
                "credentials are unavailable: the credential key could not be loaded ({reason})"
            ))
        })
    }

    pub fn credentials(&self) -> Result<Vec<Credential>> {
        self.catalog.credentials()
    }

    pub fn credential(&self, id: i64) -> Result<Credential> {
        self.catalog
            .credential(id)?
            .ok_or_else(|| Error::NotFound(format!("no VMware credential {id}")))
    }

    pub fn default_credential(&self) -> Result<Credential> {
        self.catalog
            .default_credential()?
            .ok_or_else(|| Error::NotFound("no default VMware credential".into()))
    }

    pub fn create_credential(&self, req: CredentialRequest) -> Result<Credential> {
        let fields = fields(&req, None)?;
        let password = req
            .password
            .ok_or_else(|| Error::Invalid("password is required".into()))?;
        check_password(&password)?;
        let key = self.key()?;
        let id = self
            .catalog
            .insert_credential(&fields, |id| key.seal(id, password.expose()))?;
        tracing::info!(credential_id = id, name = %fields.credential_name, "VMware credential created");
        self.credential(id)
    }

    /// A blank password keeps the stored one (the GUI's edit form says "leave blank to keep").
    /// `is_default: false` changes nothing: the GUI sends it on every save and has no way to
    /// unset a default, so the default moves only when another credential becomes it.
    pub fn update_credential(&self, id: i64, mut req: CredentialRequest) -> Result<Credential> {
        if req.password.as_ref().is_some_and(|p| p.is_empty()) {
            req.password = None;
        }
        if req.is_default == Some(false) {
            req.is_default = None;
        }
        let current = self.credential(id)?;
        let fields = fields(&req, Some(&current))?;
        let sealed = match &req.password {
            Some(password) => {
                check_password(password)?;
                Some(self.key()?.seal(id, password.expose()))
            }
            None => None,
        };
        self.catalog.update_credential(id, &fields, sealed)?;
        tracing::info!(
            credential_id = id,
            password_changed = req.password.is_some(),
            "VMware credential updated"
        );
        self.credential(id)
    }

    pub fn set_default_credential(&self, id: i64) -> Result<Credential> {
        let req = CredentialRequest {
            is_default: Some(true),
            ..CredentialRequest::default()
        };
        self.update_credential(id, req)
    }

    pub fn delete_credential(&self, id: i64) -> Result<()> {
        self.credential(id)?;
        let users = self.catalog.contexts_using_credential(id)?;
        if !users.is_empty() {
            return Err(Error::Conflict(format!(
                "VMware credential {id} is used by the VM contexts of {}; delete those or discover them with another credential first",
                users.join(", ")
            )));
        }
        self.catalog.delete_credential(id)?;
        tracing::info!(credential_id = id, "VMware credential deleted");
        Ok(())
    }

    /// The credential with its password opened, for a call to the SNA.
    pub fn vcenter_login(&self, id: i64) -> Result<VcenterLogin> {
        let c = self.credential(id)?;
        if !c.is_active {
            return Err(Error::Conflict(format!(
                "VMware credential {id} ({:?}) is not active",
                c.credential_name
            )));
        }
        let key = self.key().map_err(|err| {
            Error::Unavailable(format!(
                "VMware credential {id} ({:?}) cannot be decrypted: {err}",
                c.credential_name
            ))
        })?;
        let password = key.open(id, &c.password_sealed).map_err(|err| {
            Error::Unavailable(format!(
                "VMware credential {id} ({:?}) cannot be decrypted: {err}; the hub's key \
                 ({} or <data-dir>/{}) is not the one it was stored with",
                c.credential_name,
                secrets::KEY_ENV,
                secrets::KEY_FILE
            ))
        })?;
        Ok(VcenterLogin {
            credential_id: id,
            vcenter_host: c.vcenter_host,
            username: c.username,
            password,
            datacenter: c.datacenter,
        })
    }
}

/// At start: name every credential the loaded key does not open, so a lost or wrong key shows in
/// the log before a discovery or backup trips over it. Nothing else depends on it.
pub(crate) fn check_key(catalog: &Catalog, key: &CredentialKey) {
    let Ok(all) = catalog.credentials() else {
        return;
    };
    for c in all {
        if let Err(err) = key.open(c.id, &c.password_sealed) {
            tracing::error!(credential_id = c.id, name = %c.credential_name, %err,
                "VMware credential cannot be decrypted with this hub's credential key");
        }
    }
}

/// Where the new key of a rotation comes from and goes to.
pub enum KeySource {
    /// `SENDENSE_HUB_CREDENTIAL_KEY`: the operator gives the new key in
    /// `SENDENSE_HUB_NEW_CREDENTIAL_KEY` and sets it in the environment afterwards.
    Env { current: Secret, new: Secret },
    /// `<data-dir>/credential-key`: a new key is generated and replaces the file.
    File,
}

/// Re-encrypt every credential under a new key in one catalog transaction. Takes the data dir's
/// lock, as `serve` does: a running hub keeps sealing with the key it loaded. Returns how many.
///
/// With the key file, a rotation is two phases: the new key is written to `credential-key.new`
/// (synced), the catalog is committed under it, then the file is renamed over `credential-key`.
/// A crash before the commit leaves a staged key that sealed nothing; after it, the staged key
/// is the one that opens the catalog. Either way [`finish_rotation`] (here first, and at every
/// start) settles it, and never deletes a staged key that opens a credential.
pub fn rotate_key(data_dir: &Path, source: KeySource) -> Result<usize> {
    let _lock = crate::sys::datadir::lock(data_dir)?;
    let catalog = Catalog::open(&data_dir.join(crate::catalog::CATALOG_FILE))?;
    let (old, new) = match &source {
        KeySource::Env { current, new } => (
            CredentialKey::from_base64(current.expose(), secrets::KEY_ENV)?,
            CredentialKey::from_base64(new.expose(), secrets::NEW_KEY_ENV)?,
        ),
        KeySource::File => {
            finish_rotation(data_dir, &catalog)?;
            let path = secrets::key_file(data_dir);
            let old = secrets::read_key_file(&path)?.ok_or_else(|| {
                Error::Config(format!(
                    "{} does not exist: nothing to rotate",
                    path.display()
                ))
            })?;
            let new = CredentialKey::generate();
            // `create_new`: a staged file still here was not settled above, so it is not ours
            // to replace.
            secrets::write_key_file(&data_dir.join(secrets::NEW_KEY_FILE), &new)?;
            (old, new)
        }
    };
    let resealed = catalog.reseal_credentials(
        |c| {
            let password = old.open(c.id, &c.password_sealed).map_err(|err| {
                Error::Config(format!(
                    "VMware credential {} ({:?}) does not open with the current key: {err}; nothing was changed",
                    c.id, c.credential_name
                ))
            })?;
            Ok(new.seal(c.id, password.expose()))
        },
        |id, sealed| {
            let secret = old.open_repository_secret(id, sealed).map_err(|err| {
                Error::Config(format!(
                    "the secret of repository {id:?} does not open with the current key: {err}; nothing was changed"
                ))
            })?;
            Ok(new.seal_repository_secret(id, secret.expose()))
        },
    );
    let count = match (resealed, &source) {
        (Ok(count), _) => count,
        (Err(err), KeySource::File) => {
            // Settled by what the catalog holds rather than assumed rolled back: a failed commit
            // may still have reached the disk, and then the staged key is the one to keep.
            if let Err(settle) = finish_rotation(data_dir, &catalog) {
                tracing::warn!(%settle, "the staged credential key was left in place");
            }
            return Err(err);
        }
        (Err(err), KeySource::Env { .. }) => return Err(err),
    };
    if let KeySource::File = source {
        install_staged(data_dir)?;
    }
    Ok(count)
}

/// Settle a rotation a crash interrupted (`credential-key.new` left beside `credential-key`), by
/// which key opens the catalog's credentials: the staged one means the catalog was committed
/// under it, so it replaces the key file; only the current one (or none, while the key file
/// exists) means the commit never happened, so the staged key sealed nothing and goes. When both
/// open some, or neither while the key file is missing, nothing is touched and the error says so.
pub(crate) fn finish_rotation(data_dir: &Path, catalog: &Catalog) -> Result<()> {
    let staged_path = data_dir.join(secrets::NEW_KEY_FILE);
    let Some(staged) = secrets::read_key_file(&staged_path)? else {
        return Ok(());
    };
    let path = secrets::key_file(data_dir);
    let current = secrets::read_key_file(&path)?;
    let all = catalog.credentials()?;
    let repository_secrets = catalog.repository_secrets()?;
    let opened_by = |key: &CredentialKey| {
        all.iter()
            .filter(|c| key.open(c.id, &c.password_sealed).is_ok())
            .count()
            + repository_secrets
                .iter()
                .filter(|(id, sealed)| key.open_repository_secret(id, sealed).is_ok())
                .count()
    };
    let by_staged = opened_by(&staged);
    let by_current = current.as_ref().map_or(0, opened_by);
    let shown = (staged_path.display(), path.display());
    let sealed = all.len() + repository_secrets.len();
    if by_staged > 0 && by_current > 0 || by_staged == 0 && current.is_none() && sealed > 0 {
        return Err(Error::Config(format!(
            "an interrupted key rotation left {}, and it opens {by_staged} of {} sealed \
             secret(s) (VMware credentials, S3 repository keys) while {} opens {by_current}: nothing was changed; keep both files and \
             move the one that opens your credentials to {}",
            shown.0, sealed, shown.1, shown.1
        )));
    }
    if by_staged > 0 || current.is_none() {
        install_staged(data_dir)?;
        tracing::warn!(key_file = %shown.1, "finished an interrupted credential key rotation");
    } else {
        std::fs::remove_file(&staged_path).map_err(Error::io(format!("removing {}", shown.0)))?;
        sync_dir(data_dir)?;
        tracing::warn!(staged = %shown.0,
            "removed the key of a credential key rotation interrupted before its commit");
    }
    Ok(())
}

/// The rotation's second phase: the staged key becomes the key file, durably.
fn install_staged(data_dir: &Path) -> Result<()> {
    let (staged, path) = (
        data_dir.join(secrets::NEW_KEY_FILE),
        secrets::key_file(data_dir),
    );
    std::fs::rename(&staged, &path).map_err(Error::io(format!(
        "renaming {} to {}",
        staged.display(),
        path.display()
    )))?;
    sync_dir(data_dir)
}

fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(Error::io(format!("syncing {}", dir.display())))
}
