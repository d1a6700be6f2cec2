-- A decision rewrites its request's row, and so adds an entry to each of the table's indexes that holds the new
-- row. The indexes that find pending requests now hold only pending requests, as the one of decided requests
-- (0028) holds only those: every query on them asks for `status = 'pending'`, and a decision writes three
-- index entries where it wrote six. The index of requests to escalate holds only those that have a time to.
-- The index by requester is gone: it counted a key's pending requests, which `key_pending` (0026) keeps. A
-- session's requests, counted by status for its summary, have an index of their own, where they were found
-- among all of the tenant's.
DROP INDEX approvals_by_requester;
DROP INDEX approvals_by_deadline;
CREATE INDEX approvals_by_deadline ON approval_requests (deadline) WHERE status = 'pending';
DROP INDEX approvals_to_escalate;
CREATE INDEX approvals_to_escalate ON approval_requests (escalate_at)
    WHERE status = 'pending' AND escalate_at IS NOT NULL;
DROP INDEX approvals_by_status;
CREATE INDEX approvals_pending ON approval_requests (tenant_id, created_at, id) WHERE status = 'pending';
CREATE INDEX approvals_by_session ON approval_requests (session_id, status);
