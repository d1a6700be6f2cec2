-- Webhook endpoints a tenant's admins registered, and each delivery attempt. A webhook delivers its tenant's
-- events in `seq` order: `delivered_seq` is the last one delivered or passed over (not subscribed), so a crash
-- loses none and a restart goes on from there. The secret signs deliveries (Standard Webhooks); after a rotation
-- the previous one signs too until `previous_until`.
CREATE TABLE webhooks (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    url TEXT NOT NULL,
    events TEXT NOT NULL,
    description TEXT,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_until TEXT,
    delivered_seq BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX webhooks_by_tenant ON webhooks (tenant_id, id);
CREATE INDEX webhooks_due ON webhooks (next_attempt_at);

CREATE TABLE webhook_deliveries (
    webhook_id TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    attempt BIGINT NOT NULL,
    at TEXT NOT NULL,
    status BIGINT,
    error TEXT,
    latency_ms BIGINT NOT NULL,
    PRIMARY KEY (webhook_id, seq, attempt)
);
