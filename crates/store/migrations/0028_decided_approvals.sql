-- Decided requests, newest first, a page at a time (the inbox's history): an index of only the decided ones, so
-- a page never walks the pending requests, and filing a request (which is pending) writes nothing to it.
CREATE INDEX approvals_decided ON approval_requests (tenant_id, created_at, id) WHERE status <> 'pending';
