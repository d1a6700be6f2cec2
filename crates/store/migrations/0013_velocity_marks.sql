-- The circuit breaker's running totals: each payment a velocity rule counts (allowed, or sent to a person)
-- leaves a mark in every scope a rule counts (`session:<id>`, `key:<id>`, or those scopes' payments identical
-- to it): its place among the scope's counted payments and the scope's USD total so far. A window's totals are
-- its last mark minus its first, two index lookups however many payments it holds.
CREATE TABLE velocity_marks (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    scope TEXT NOT NULL,
    seq BIGINT NOT NULL,
    at TEXT NOT NULL,
    usd_total TEXT NOT NULL,
    usd TEXT NOT NULL,
    PRIMARY KEY (tenant_id, scope, seq)
);
CREATE INDEX velocity_marks_by_time ON velocity_marks (tenant_id, scope, at);
-- Marks older than the longest window are pruned in batches.
CREATE INDEX velocity_marks_by_age ON velocity_marks (at);
-- The breaker no longer reads a key's payments.
DROP INDEX payments_by_requester;
