-- Deletes commit here first (the backup's row goes, this row comes, in one transaction); the files
-- go after, then this row. A row left by a crash in between is finished at the next start.
CREATE TABLE deletions (
    backup_id     TEXT PRIMARY KEY,
    dir           TEXT NOT NULL,
    requested_at  TEXT NOT NULL
);
