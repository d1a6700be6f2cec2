-- Agent executions and their steps. Every step is written before it runs and after it ends, so a restart
-- finds each one where it was.
CREATE TABLE executions (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    session_id TEXT NOT NULL REFERENCES sessions (id),
    status TEXT NOT NULL,
    command TEXT,
    error TEXT,
    current_step BIGINT NOT NULL,
    cost_usd TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    finished_at TEXT
);
CREATE INDEX executions_by_session ON executions (tenant_id, session_id, created_at);
CREATE INDEX executions_by_status ON executions (status);

CREATE TABLE execution_steps (
    execution_id TEXT NOT NULL REFERENCES executions (id),
    idx BIGINT NOT NULL,
    tool TEXT NOT NULL,
    args TEXT NOT NULL,
    status TEXT NOT NULL,
    result TEXT,
    error TEXT,
    approval_id TEXT,
    payment_id TEXT,
    cost_usd TEXT,
    started_at TEXT,
    finished_at TEXT,
    duration_ms BIGINT,
    PRIMARY KEY (execution_id, idx)
);
