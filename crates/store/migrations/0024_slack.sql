-- People reached in Slack. A key may name its person's Slack user, so a button they press in Slack decides as
-- that key (one live key per Slack user in a tenant). A tenant's notifier reads its event log from
-- `delivered_seq` as a webhook does, so a crash loses no message; `next_attempt_at` is also the lease that keeps
-- two instances from posting the same one. A posted message keeps its `ts`, so a decision updates the message
-- it was asked in.
ALTER TABLE api_keys ADD COLUMN slack_user TEXT;
CREATE UNIQUE INDEX api_keys_by_slack_user ON api_keys (tenant_id, slack_user)
    WHERE slack_user IS NOT NULL AND revoked_at IS NULL;

CREATE TABLE notifiers (
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    channel TEXT NOT NULL,
    delivered_seq BIGINT NOT NULL,
    failures BIGINT NOT NULL,
    next_attempt_at TEXT NOT NULL,
    PRIMARY KEY (tenant_id, channel)
);
CREATE INDEX notifiers_due ON notifiers (next_attempt_at);

CREATE TABLE slack_messages (
    approval_id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    channel TEXT NOT NULL,
    ts TEXT NOT NULL,
    created_at TEXT NOT NULL
);
