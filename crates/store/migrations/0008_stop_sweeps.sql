-- A stop (the emergency stop, or a session killed) commits at once; what it leaves pending in its scope is
-- cancelled afterwards in batches. Each row is a sweep still to finish: any instance takes it up, after a crash
-- too, and the one that finds nothing left deletes it and reports how many were cancelled.
CREATE TABLE stop_sweeps (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    -- NULL for the tenant-wide emergency stop.
    session_id TEXT,
    reason TEXT NOT NULL,
    cancelled BIGINT NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL
);
CREATE INDEX stop_sweeps_by_tenant ON stop_sweeps (tenant_id);
-- A key's requests waiting on people, counted (up to its policy's cap) when it asks for another.
CREATE INDEX approvals_by_requester ON approval_requests (requested_by, status);
