-- One schema for SQLite and PostgreSQL: ids and timestamps are TEXT (UUIDs, fixed-width RFC 3339 UTC),
-- money is an exact decimal string, counters are BIGINT.

CREATE TABLE tenants (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    -- The head of the audit chain and the event counter. Every write transaction updates this row first,
    -- which serializes a tenant's writers and keeps both sequences gap-free.
    audit_seq BIGINT NOT NULL DEFAULT 0,
    audit_head TEXT NOT NULL DEFAULT '0000000000000000000000000000000000000000000000000000000000000000',
    event_seq BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('admin', 'approver', 'agent')),
    token_hash TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);

CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    name TEXT,
    wallet_address TEXT,
    config TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('active', 'killed')),
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX sessions_by_tenant ON sessions (tenant_id, created_at);

CREATE TABLE payments (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    session_id TEXT NOT NULL REFERENCES sessions (id),
    tool TEXT NOT NULL,
    amount TEXT NOT NULL,
    currency TEXT NOT NULL,
    usd_value TEXT NOT NULL,
    recipient TEXT NOT NULL,
    description TEXT,
    status TEXT NOT NULL
        CHECK (status IN ('pending_approval', 'authorized', 'executed', 'denied', 'failed')),
    reason TEXT,
    approval_id TEXT,
    tx_hash TEXT,
    network TEXT,
    idempotency_key TEXT,
    -- SHA-256 of the request as first made, so a reused idempotency key with other content is refused.
    request_hash TEXT NOT NULL,
    requested_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX payments_by_session ON payments (tenant_id, session_id, created_at);

CREATE TABLE approval_requests (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    session_id TEXT NOT NULL REFERENCES sessions (id),
    payment_id TEXT REFERENCES payments (id),
    tool TEXT NOT NULL,
    args TEXT NOT NULL,
    -- The complete, validated arguments an edit approved; NULL unless edited.
    edited_args TEXT,
    reason TEXT NOT NULL,
    usd_value TEXT NOT NULL,
    allowed_decisions TEXT NOT NULL,
    status TEXT NOT NULL
        CHECK (status IN ('pending', 'approved', 'rejected', 'edited', 'expired', 'cancelled')),
    requested_by TEXT NOT NULL,
    deadline TEXT NOT NULL,
    decided_by TEXT,
    decided_at TEXT,
    decision_note TEXT,
    -- Set once, by the one execution an approval allows.
    consumed_at TEXT,
    created_at TEXT NOT NULL
);
CREATE INDEX approvals_by_status ON approval_requests (tenant_id, status, created_at);

CREATE TABLE audit_log (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    session_id TEXT,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);

-- The outbox: events are written with the change they report, then fanned out after commit.
CREATE TABLE events (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    session_id TEXT,
    payload TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
