-- Repositories hold the images; `default` is created at first start under the data dir.
CREATE TABLE repositories (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL,
    created_at  TEXT NOT NULL
);

CREATE TABLE backups (
    id                TEXT PRIMARY KEY,
    vm_name           TEXT NOT NULL,
    repository_id     TEXT NOT NULL REFERENCES repositories(id),
    backup_type       TEXT NOT NULL CHECK (backup_type IN ('full', 'incremental')),
    parent_backup_id  TEXT REFERENCES backups(id),
    status            TEXT NOT NULL,
    error             TEXT,
    tags              TEXT,
    telemetry         TEXT,
    created_at        TEXT NOT NULL,
    started_at        TEXT,
    completed_at      TEXT
);
CREATE INDEX backups_vm ON backups (vm_name, repository_id, status);
CREATE INDEX backups_parent ON backups (parent_backup_id);

CREATE TABLE backup_disks (
    backup_id          TEXT NOT NULL REFERENCES backups(id) ON DELETE CASCADE,
    disk_id            INTEGER NOT NULL,
    position           INTEGER NOT NULL,
    vmware_disk_key    INTEGER NOT NULL,
    capacity_bytes     INTEGER NOT NULL,
    export_name        TEXT NOT NULL UNIQUE,
    qcow2_path         TEXT NOT NULL,
    completed          INTEGER NOT NULL DEFAULT 0,
    change_id          TEXT,
    bytes_transferred  INTEGER,
    bytes_written      INTEGER NOT NULL DEFAULT 0,
    image_size         INTEGER,
    completed_at       TEXT,
    PRIMARY KEY (backup_id, disk_id)
);

CREATE TABLE restores (
    id           TEXT PRIMARY KEY,
    backup_id    TEXT NOT NULL REFERENCES backups(id),
    disk_id      INTEGER NOT NULL,
    export_name  TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL,
    expires_at   TEXT NOT NULL
);
