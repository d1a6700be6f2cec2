-- How many of the requests each key asked for still wait on people, changed in the same transaction as every
-- request that starts or stops waiting: the cap on them (a policy's `max_pending_approvals`) is then one row
-- read, not a count of an index range that grows with what is pending.
CREATE TABLE key_pending (
    key_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    pending BIGINT NOT NULL
);
INSERT INTO key_pending (key_id, tenant_id, pending)
    SELECT requested_by, tenant_id, COUNT(*) FROM approval_requests WHERE status = 'pending'
    GROUP BY requested_by, tenant_id;
