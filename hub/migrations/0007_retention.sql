-- Retention: a backup an operator protects is never pruned nor deleted.
ALTER TABLE backups ADD COLUMN protected INTEGER NOT NULL DEFAULT 0;

-- A chain merge in progress: `removed` is folded into its only child `into` (the child's clusters
-- are committed into the removed backup's images, which are then renamed over the child's). The
-- row comes before the first image is touched and goes in the transaction that removes `removed`,
-- so a start that finds one finishes the merge (see hub::prune::merge). While it is here, the VM's
-- chain in that repository is busy: no new backup on it, no restore of it.
CREATE TABLE merges (
    removed        TEXT PRIMARY KEY,
    into_backup    TEXT NOT NULL,
    vm_name        TEXT NOT NULL,
    repository_id  TEXT NOT NULL,
    started_at     TEXT NOT NULL
);
CREATE INDEX merges_by_vm ON merges (repository_id, vm_name);
