-- Protection that runs itself (hub::protect): schedules, machine groups and their members,
-- policies with their copy rules, protection flows and their executions.
CREATE TABLE schedules (
    id                   TEXT PRIMARY KEY,
    name                 TEXT NOT NULL UNIQUE,
    description          TEXT,
    cron_expression      TEXT NOT NULL,
    timezone             TEXT NOT NULL,
    skip_if_running      INTEGER NOT NULL,
    max_concurrent_jobs  INTEGER NOT NULL,
    replication_type     TEXT NOT NULL,
    retry_attempts       INTEGER NOT NULL,
    retry_delay_minutes  INTEGER NOT NULL,
    enabled              INTEGER NOT NULL,
    created_by           TEXT NOT NULL,
    created_at           TEXT NOT NULL,
    updated_at           TEXT NOT NULL
);

CREATE TABLE machine_groups (
    id                  TEXT PRIMARY KEY,
    name                TEXT NOT NULL UNIQUE,
    description         TEXT,
    schedule_id         TEXT REFERENCES schedules (id),
    max_concurrent_vms  INTEGER NOT NULL,
    priority            INTEGER NOT NULL,
    created_by          TEXT NOT NULL,
    created_at          TEXT NOT NULL,
    updated_at          TEXT NOT NULL
);

-- A VM context is in at most one group (the primary key).
CREATE TABLE group_members (
    context_id  TEXT PRIMARY KEY REFERENCES vm_contexts (context_id) ON DELETE CASCADE,
    group_id    TEXT NOT NULL REFERENCES machine_groups (id),
    priority    INTEGER NOT NULL,
    enabled     INTEGER NOT NULL,
    added_by    TEXT NOT NULL,
    added_at    TEXT NOT NULL
);
CREATE INDEX group_members_by_group ON group_members (group_id);

CREATE TABLE policies (
    id                     TEXT PRIMARY KEY,
    name                   TEXT NOT NULL UNIQUE,
    enabled                INTEGER NOT NULL,
    primary_repository_id  TEXT NOT NULL REFERENCES repositories (id),
    retention_days         INTEGER,
    keep_last              INTEGER,
    keep_hourly            INTEGER,
    keep_daily             INTEGER,
    keep_weekly            INTEGER,
    keep_monthly           INTEGER,
    keep_yearly            INTEGER,
    created_at             TEXT NOT NULL,
    updated_at             TEXT NOT NULL
);

CREATE TABLE copy_rules (
    id                         TEXT PRIMARY KEY,
    policy_id                  TEXT NOT NULL REFERENCES policies (id) ON DELETE CASCADE,
    destination_repository_id  TEXT NOT NULL REFERENCES repositories (id),
    copy_mode                  TEXT NOT NULL,
    priority                   INTEGER NOT NULL,
    enabled                    INTEGER NOT NULL,
    verify_after_copy          INTEGER NOT NULL,
    created_at                 TEXT NOT NULL
);
CREATE INDEX copy_rules_by_policy ON copy_rules (policy_id);

CREATE TABLE protection_flows (
    id             TEXT PRIMARY KEY,
    name           TEXT NOT NULL UNIQUE,
    description    TEXT,
    flow_type      TEXT NOT NULL,
    target_type    TEXT NOT NULL,
    target_id      TEXT NOT NULL,
    repository_id  TEXT NOT NULL REFERENCES repositories (id),
    policy_id      TEXT REFERENCES policies (id),
    schedule_id    TEXT REFERENCES schedules (id),
    enabled        INTEGER NOT NULL,
    created_by     TEXT NOT NULL,
    created_at     TEXT NOT NULL,
    updated_at     TEXT NOT NULL,
    -- The newest tick this flow's schedule ran for: a restart neither repeats it nor loses the
    -- ones missed while the hub was down (one run for those, hub::protect::cron::missed).
    last_tick_at   TEXT
);

-- One per run of a flow (manual, scheduled or through the API); the run itself is a job.
CREATE TABLE flow_executions (
    id                 TEXT PRIMARY KEY,
    flow_id            TEXT NOT NULL REFERENCES protection_flows (id) ON DELETE CASCADE,
    job_id             TEXT NOT NULL REFERENCES jobs (id),
    status             TEXT NOT NULL,
    execution_type     TEXT NOT NULL,
    triggered_by       TEXT NOT NULL,
    scheduled_at       TEXT,
    started_at         TEXT,
    completed_at       TEXT,
    jobs_created       INTEGER NOT NULL DEFAULT 0,
    jobs_completed     INTEGER NOT NULL DEFAULT 0,
    jobs_failed        INTEGER NOT NULL DEFAULT 0,
    jobs_skipped       INTEGER NOT NULL DEFAULT 0,
    vms_processed      INTEGER NOT NULL DEFAULT 0,
    bytes_transferred  INTEGER NOT NULL DEFAULT 0,
    error_message      TEXT,
    backup_ids         TEXT,
    created_at         TEXT NOT NULL
);
CREATE INDEX flow_executions_by_flow ON flow_executions (flow_id, created_at);
