-- Quorums: a request may need several distinct people, optionally from named approver groups, to approve the
-- same action. Requests filed before keep needing one.
ALTER TABLE approval_requests ADD COLUMN approvals_required BIGINT NOT NULL DEFAULT 1;
-- The groups whose members decide the request (a JSON array); anyone who decides, when NULL.
ALTER TABLE approval_requests ADD COLUMN approver_groups TEXT;
-- Each person's approval of one action of a request (by the action's digest): once per person and action. An
-- edit is a new action, so its count starts again.
CREATE TABLE approval_votes (
    approval_id TEXT NOT NULL REFERENCES approval_requests (id),
    digest TEXT NOT NULL,
    key_id TEXT NOT NULL,
    comment TEXT,
    at TEXT NOT NULL,
    PRIMARY KEY (approval_id, digest, key_id)
);
-- The approver groups a key is in (a JSON array); none, when NULL.
ALTER TABLE api_keys ADD COLUMN groups TEXT;
-- Escalation: the steps of its policy's chain a request can reach before its deadline (a JSON array), how many
-- it has reached, and when the next is due (NULL when none is left).
ALTER TABLE approval_requests ADD COLUMN escalation TEXT;
ALTER TABLE approval_requests ADD COLUMN escalated BIGINT NOT NULL DEFAULT 0;
ALTER TABLE approval_requests ADD COLUMN escalate_at TEXT;
-- The sweeper's range of pending requests due to escalate.
CREATE INDEX approvals_to_escalate ON approval_requests (status, escalate_at);
