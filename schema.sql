-- errand's storage: the one definition of every table, index, CHECK and trigger.
--
-- Loaded by src/store/migrate.rs with include_str!. Every statement is idempotent
-- (IF NOT EXISTS) so the file is re-applied after the versioned ALTER steps when an
-- older database is upgraded in place; PRAGMA user_version records the version.
--
-- Times are INTEGER milliseconds since the Unix epoch (UTC), always passed in by the
-- caller (never datetime('now') in a query), except the outbox default below, which
-- applications rely on when they insert rows from their own SQL.

-- One outbound HTTP request plus its policy.
CREATE TABLE IF NOT EXISTS jobs (
    id              INTEGER PRIMARY KEY,
    token           TEXT    NOT NULL,               -- bearer for polling this one job
    account         TEXT    NOT NULL,
    provider        TEXT    NOT NULL DEFAULT 'default',
    state           TEXT    NOT NULL CHECK (state IN
                        ('draft', 'approved', 'running', 'retry', 'succeeded', 'canceled')),
    run_at          INTEGER NOT NULL,               -- earliest next attempt
    attempts        INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    attempts_base   INTEGER NOT NULL DEFAULT 0,     -- attempts made before a person re-ran it: max_attempts counts from here
    max_attempts    INTEGER CHECK (max_attempts IS NULL OR max_attempts >= 1), -- NULL: provider's
    method          TEXT    NOT NULL,
    url             TEXT    NOT NULL,
    headers         TEXT    NOT NULL DEFAULT '[]',  -- JSON [[name, value], ...]
    body            BLOB,
    timeout_ms      INTEGER,                        -- NULL: provider's or 30 s
    backoff         TEXT,                           -- JSON {initial_ms, multiplier, max_ms} or NULL
    idempotency_key TEXT,                           -- outbound Idempotency-Key; NULL = disabled
    expires_at      INTEGER,
    callback_url    TEXT,
    metadata        TEXT    NOT NULL DEFAULT '{}',
    lease_owner     TEXT,                           -- "host:pid:start" of the claiming process
    lease_until     INTEGER,
    last_error      TEXT,                           -- JSON {category, reason, message}
    result_status   INTEGER,
    result_headers  TEXT,
    result_body     BLOB,
    result_truncated INTEGER NOT NULL DEFAULT 0,
    operation_id    INTEGER,                        -- the operation this job is a step of
    step_index      INTEGER,                        -- 0-based step of that operation
    webhook_id      TEXT,                           -- Standard Webhooks message id, stable across retries
    signing_key     TEXT,                           -- where the signing secret lives ('subscription:CHANNEL/NAME'); NULL = unsigned
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    finished_at     INTEGER
);

-- Due jobs: the scheduler's claim query reads only this partial index.
CREATE INDEX IF NOT EXISTS jobs_due ON jobs (run_at) WHERE state IN ('approved', 'retry');
-- Leases held are found through jobs_state_id (state = 'running': a handful of rows per
-- worker), so no index of their own costs a write at every claim and every outcome.
-- Listing by state and by account (keyset paging on id).
CREATE INDEX IF NOT EXISTS jobs_state_id ON jobs (state, id);
CREATE INDEX IF NOT EXISTS jobs_account_id ON jobs (account, id);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_operation ON jobs (operation_id, step_index) WHERE operation_id IS NOT NULL;

-- The state machine of SPEC §2, enforced for every writer, including hand-written SQL.
-- src/job.rs holds the same table; a test checks the two agree pair by pair. Written as
-- a CASE on the new state (the states each may come from) rather than a list of
-- 'from>to' strings: every claim and every outcome runs it, and building and comparing
-- those strings was a sixth of their cost (schema version 2).
CREATE TRIGGER IF NOT EXISTS jobs_state_transition
BEFORE UPDATE OF state ON jobs
FOR EACH ROW WHEN OLD.state IS NOT NEW.state AND NOT (CASE NEW.state
    WHEN 'running'   THEN OLD.state IN ('approved', 'retry')
    WHEN 'succeeded' THEN OLD.state = 'running'
    WHEN 'retry'     THEN OLD.state = 'running'
    WHEN 'canceled'  THEN OLD.state IN ('running', 'draft', 'approved', 'retry')
    WHEN 'draft'     THEN OLD.state IN ('running', 'canceled')
    WHEN 'approved'  THEN OLD.state IN ('draft', 'running', 'retry')
    ELSE 0 END)
BEGIN
    SELECT RAISE(ABORT, 'errand: job state transition not allowed by the state machine');
END;

-- A new job starts in draft or approved (SPEC §2); the other states are reached only by
-- transitions.
CREATE TRIGGER IF NOT EXISTS jobs_insert_state
BEFORE INSERT ON jobs
FOR EACH ROW WHEN NEW.state NOT IN ('draft', 'approved')
BEGIN
    SELECT RAISE(ABORT, 'errand: a new job must be draft or approved');
END;

-- The audit log: one row per attempt, written in the same transaction as the job's new
-- state. Secrets are redacted before they get here.
CREATE TABLE IF NOT EXISTS attempts (
    id              INTEGER PRIMARY KEY,
    job_id          INTEGER NOT NULL,
    attempt         INTEGER NOT NULL,               -- 1-based attempt number of the job
    started_at      INTEGER NOT NULL,
    duration_ms     INTEGER NOT NULL,
    outcome         TEXT    NOT NULL CHECK (outcome IN
                        ('success', 'unavailable', 'unauthorized', 'forbidden', 'unclassified', 'lost')),
    ambiguous       INTEGER NOT NULL DEFAULT 0,
    request_method  TEXT    NOT NULL,
    request_url     TEXT    NOT NULL,
    request_headers TEXT    NOT NULL DEFAULT '{}',
    request_body    BLOB,
    response_status INTEGER,
    response_headers TEXT,
    response_body   BLOB,
    response_truncated INTEGER NOT NULL DEFAULT 0,
    error           TEXT,
    runner          TEXT                            -- lease owner (host:pid:start:id) that ran it
);
CREATE INDEX IF NOT EXISTS attempts_job ON attempts (job_id, attempt);
CREATE INDEX IF NOT EXISTS attempts_started ON attempts (started_at);

-- Tenants of the application. A missing row means active and not paused.
CREATE TABLE IF NOT EXISTS accounts (
    account    TEXT PRIMARY KEY,
    status     TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'suspended')),
    paused     INTEGER NOT NULL DEFAULT 0 CHECK (paused IN (0, 1)),
    updated_at INTEGER NOT NULL
);

-- The secret an account holds for a provider. Never returned by any API.
CREATE TABLE IF NOT EXISTS credentials (
    account    TEXT    NOT NULL,
    provider   TEXT    NOT NULL,
    secret     TEXT    NOT NULL,
    header     TEXT    NOT NULL DEFAULT 'Authorization',
    format     TEXT    NOT NULL DEFAULT 'Bearer {secret}',
    status     TEXT    NOT NULL DEFAULT 'valid' CHECK (status IN ('valid', 'invalid')),
    reason     TEXT,
    version    INTEGER NOT NULL DEFAULT 1,  -- random, new on every PUT; a 401 invalidates only the version it used
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (account, provider)
);

-- Process-wide switches, e.g. key 'paused' = '1' (the global kill switch).
CREATE TABLE IF NOT EXISTS settings (
    key   TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

-- Things a person must act on. dedupe_key makes "once per credential / episode" a
-- constraint rather than a hope.
CREATE TABLE IF NOT EXISTS notifications (
    id         INTEGER PRIMARY KEY,
    kind       TEXT    NOT NULL CHECK (kind IN ('reauthorize', 'forbidden', 'exhausted', 'held',
                   'alert', 'provider_down', 'provider_recovered', 'subscription_disabled', 'triage')),
    account    TEXT,
    provider   TEXT,
    job_id     INTEGER,
    message    TEXT    NOT NULL,
    dedupe_key TEXT UNIQUE,
    created_at INTEGER NOT NULL,
    -- The job that delivers it to notify_url (set in the transaction that enqueues that
    -- job); 0 when it is not delivered (about a delivery job itself); NULL until then.
    delivery_job INTEGER
);
CREATE INDEX IF NOT EXISTS notifications_account ON notifications (account, id);
-- Notifications still to hand to notify_url: the supervisor's delivery pass.
CREATE INDEX IF NOT EXISTS notifications_undelivered ON notifications (id) WHERE delivery_job IS NULL;

-- Errors no rule classifies, grouped by signature.
CREATE TABLE IF NOT EXISTS triage (
    id         INTEGER PRIMARY KEY,
    provider   TEXT    NOT NULL,
    signature  TEXT    NOT NULL,
    count      INTEGER NOT NULL DEFAULT 1,
    sample_job INTEGER,
    sample     TEXT    NOT NULL,
    first_seen INTEGER NOT NULL,
    last_seen  INTEGER NOT NULL,
    UNIQUE (provider, signature)
);

-- Incoming Idempotency-Key of POST /v1/jobs: the same key (per account) within 24 h
-- replays the first answer.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    account      TEXT    NOT NULL,
    key          TEXT    NOT NULL,
    request_hash TEXT    NOT NULL,
    job_id       INTEGER,
    created_at   INTEGER NOT NULL,
    first_status INTEGER,                        -- 200 when the first call waited (Prefer: wait) and was answered with the finished job; NULL: the create's 202 (schema version 3)
    PRIMARY KEY (account, key)
);

-- The transactional outbox (SPEC §5, contract): applications that share this file insert
-- rows in their own transactions; errand drains them into jobs or channel events.
CREATE TABLE IF NOT EXISTS outbox (
    id         INTEGER PRIMARY KEY,
    kind       TEXT NOT NULL DEFAULT 'job',
    payload    TEXT NOT NULL,
    created_at INTEGER NOT NULL DEFAULT (CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER))
);

-- Outbox rows that could not become a job, with the reason. Never dropped silently.
CREATE TABLE IF NOT EXISTS outbox_rejected (
    id          INTEGER PRIMARY KEY,
    outbox_id   INTEGER NOT NULL,
    kind        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    reason      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    rejected_at INTEGER NOT NULL
);

-- Multi-step operations: an ordered list of steps, each run as a job when the one before
-- it succeeded. `completed` is the recovery point: it moves in the same transaction as
-- the step's outcome, together with the insert of the next step's job.
CREATE TABLE IF NOT EXISTS operations (
    id         INTEGER PRIMARY KEY,
    token      TEXT    NOT NULL,
    account    TEXT    NOT NULL,
    steps      TEXT    NOT NULL,                    -- JSON array of step specs, as given
    step_count INTEGER NOT NULL CHECK (step_count >= 1),
    completed  INTEGER NOT NULL DEFAULT 0,          -- steps done (the recovery point)
    results    TEXT    NOT NULL DEFAULT '[]',       -- JSON array: one response per completed step
    error      TEXT,                                -- JSON {category, reason, message} when a step could not be built
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    CHECK (completed >= 0 AND completed <= step_count)
);

-- Pub/sub channels that have subscriptions (their payload schemas live in the config).
CREATE TABLE IF NOT EXISTS channels (
    name       TEXT PRIMARY KEY,
    created_at INTEGER NOT NULL
);

-- Subscribers of a channel. The secret signs deliveries; never returned by any API.
CREATE TABLE IF NOT EXISTS subscriptions (
    channel    TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    url        TEXT    NOT NULL,
    secret     TEXT    NOT NULL,                    -- whsec_<base64>
    status     TEXT    NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    reason     TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (channel, name)
);
