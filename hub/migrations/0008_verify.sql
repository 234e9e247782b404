-- Verify: the outcome of the newest verify of each backup (its own images and its chain's), and
-- the digest of each disk's digests file (`disk<N>.digests`, written at finalise).
ALTER TABLE backups ADD COLUMN verify_state TEXT NOT NULL DEFAULT 'none';
ALTER TABLE backups ADD COLUMN verified_at TEXT;
ALTER TABLE backups ADD COLUMN verify_error TEXT;
-- Why a backup asked as an incremental was made a full (its base failed verify).
ALTER TABLE backups ADD COLUMN note TEXT;
ALTER TABLE backup_disks ADD COLUMN digests_blake3 TEXT;
-- A verify job after each backup that completes in the repository.
ALTER TABLE repositories ADD COLUMN verify_new_backups INTEGER NOT NULL DEFAULT 0;
