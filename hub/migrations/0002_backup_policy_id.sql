-- The Sendense policy that asked for a backup (`policy_id` of the create body), kept for the GUI.
ALTER TABLE backups ADD COLUMN policy_id TEXT;
