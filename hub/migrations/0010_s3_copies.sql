-- S3 repositories, and copies of backups into them.
--
-- A repository is `local` (a directory: `path`) or `s3` (`s3_config`: endpoint, region, bucket,
-- prefix, access key id, path style, as JSON; `path` then holds `s3://bucket/prefix` for people).
-- The secret access key is sealed with the credential key (`secret_sealed`), never stored in clear.
ALTER TABLE repositories ADD COLUMN kind TEXT NOT NULL DEFAULT 'local';
ALTER TABLE repositories ADD COLUMN s3_config TEXT;
ALTER TABLE repositories ADD COLUMN secret_sealed BLOB;

-- One copy of one backup's layer in one repository. A copy outlives the local backup (pruning
-- the local chain never deletes copies), so `backup_id` is not a foreign key: what restoring the
-- copy needs (VM, type, disks, the layer below at copy time) is on the row and in the copy's
-- manifest object. `parent_backup_id` is the backup whose copy this layer's image reads through,
-- as it was when the layer was copied (a later local merge does not change an uploaded layer).
CREATE TABLE backup_copies (
    id                   TEXT PRIMARY KEY,
    backup_id            TEXT NOT NULL,
    repository_id        TEXT NOT NULL REFERENCES repositories (id),
    vm_name              TEXT NOT NULL,
    backup_type          TEXT NOT NULL,
    parent_backup_id     TEXT,
    copy_rule_id         TEXT,
    job_id               TEXT,
    status               TEXT NOT NULL,
    verification_status  TEXT NOT NULL,
    object_prefix        TEXT NOT NULL,
    size_bytes           INTEGER NOT NULL DEFAULT 0,
    disks                TEXT NOT NULL DEFAULT '[]',
    retain_until         TEXT,
    error_message        TEXT,
    copy_started_at      TEXT,
    copy_completed_at    TEXT,
    verified_at          TEXT,
    created_at           TEXT NOT NULL,
    UNIQUE (backup_id, repository_id)
);
CREATE INDEX backup_copies_by_repository ON backup_copies (repository_id, vm_name);

-- A restore may read a copy in an S3 repository (`repository_id`; NULL: the backup's own
-- repository), whose backup need not be in the catalog any more: `backup_id` is no foreign key.
-- Restores are cleared at every start, so the rows carried over are only for form.
CREATE TABLE restores_new (
    id             TEXT PRIMARY KEY,
    backup_id      TEXT NOT NULL,
    disk_id        INTEGER NOT NULL,
    export_name    TEXT NOT NULL UNIQUE,
    created_at     TEXT NOT NULL,
    expires_at     TEXT NOT NULL,
    repository_id  TEXT
);
INSERT INTO restores_new (id, backup_id, disk_id, export_name, created_at, expires_at)
    SELECT id, backup_id, disk_id, export_name, created_at, expires_at FROM restores;
DROP TABLE restores;
ALTER TABLE restores_new RENAME TO restores;
