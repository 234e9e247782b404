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

-- VMs found by discovery through the SNA; a backup without `disks` takes them from here.
CREATE TABLE vm_contexts (
    context_id     TEXT PRIMARY KEY,
    vm_name        TEXT NOT NULL UNIQUE,
    vmware_vm_id   TEXT NOT NULL DEFAULT '',
    vm_path        TEXT NOT NULL,
    vcenter_host   TEXT NOT NULL,
    datacenter     TEXT NOT NULL DEFAULT '',
    credential_id  INTEGER REFERENCES vmware_credentials(id),
    power_state    TEXT NOT NULL DEFAULT '',
    guest_os       TEXT NOT NULL DEFAULT '',
    memory_mb      INTEGER NOT NULL DEFAULT 0,
    num_cpu        INTEGER NOT NULL DEFAULT 0,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL
);

-- A context's disks in the SNA's order; `disk_id` stays with a VMware key across discoveries, so
-- an incremental's disk lines up with its parent's.
CREATE TABLE vm_disks (
    context_id         TEXT NOT NULL REFERENCES vm_contexts(context_id) ON DELETE CASCADE,
    disk_id            INTEGER NOT NULL,
    position           INTEGER NOT NULL,
    vmware_disk_key    INTEGER NOT NULL,
    label              TEXT NOT NULL DEFAULT '',
    vmdk_path          TEXT NOT NULL DEFAULT '',
    datastore          TEXT NOT NULL DEFAULT '',
    capacity_bytes     INTEGER NOT NULL,
    provisioning_type  TEXT NOT NULL DEFAULT '',
    unit_number        INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (context_id, disk_id),
    UNIQUE (context_id, vmware_disk_key)
);
