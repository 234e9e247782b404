-- The Sendense flow (issue 9): what the client's telemetry last said and when, and the old API's
-- policy and VM context of a backup.
ALTER TABLE backups ADD COLUMN last_telemetry_at TEXT;
ALTER TABLE backups ADD COLUMN policy_id TEXT;
ALTER TABLE backups ADD COLUMN vm_context_id TEXT;

-- vCenter credentials. The password is only ever stored sealed (AES-256-GCM, see hub::secrets):
-- `password_sealed` is nonce || ciphertext || tag with the row's id as associated data.
CREATE TABLE vmware_credentials (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    credential_name  TEXT NOT NULL UNIQUE,
    vcenter_host     TEXT NOT NULL,
    username         TEXT NOT NULL,
    password_sealed  BLOB NOT NULL,
    datacenter       TEXT NOT NULL DEFAULT '',
    is_active        INTEGER NOT NULL DEFAULT 1,
    is_default       INTEGER NOT NULL DEFAULT 0,
    created_at       TEXT NOT NULL,
    updated_at       TEXT NOT NULL
);
-- At most one default.
CREATE UNIQUE INDEX vmware_credentials_default ON vmware_credentials (is_default) WHERE is_default = 1;
