-- The Sendense flow (issue 9): what the client's telemetry last said and when, and the old API's
-- policy and VM context of a backup.
ALTER TABLE backups ADD COLUMN last_telemetry_at TEXT;
ALTER TABLE backups ADD COLUMN policy_id TEXT;
ALTER TABLE backups ADD COLUMN vm_context_id TEXT;
