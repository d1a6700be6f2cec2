-- Standing approvals: a person approving a payment let its session go on paying that payee (normalized) up to
-- `max_usd` in total until `expires_at`; `used_usd` is what later payments took of it.
CREATE TABLE standing_approvals (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    session_id TEXT NOT NULL REFERENCES sessions (id),
    payee TEXT NOT NULL,
    max_usd TEXT NOT NULL,
    used_usd TEXT NOT NULL,
    approval_id TEXT NOT NULL REFERENCES approval_requests (id),
    granted_by TEXT NOT NULL,
    created_at TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    revoked_at TEXT,
    revoked_by TEXT
);
CREATE INDEX standing_by_payee ON standing_approvals (tenant_id, session_id, payee);
CREATE INDEX standing_by_tenant ON standing_approvals (tenant_id, created_at);
