-- People reached by email. A key may name its person's address (one live key per address in a tenant); a
-- policy names the addresses its requests are mailed to. Each mail carries a one-time link per request and
-- person: only the SHA-256 of its token is kept, bound to the action's digest, spent by one conditional update,
-- and dead past `expires_at`. `sent_at` stays empty until the mail went, so a retry mails a fresh token (the
-- old one then finds nothing) instead of one nobody may have received.
ALTER TABLE api_keys ADD COLUMN email TEXT;
CREATE UNIQUE INDEX api_keys_by_email ON api_keys (tenant_id, email)
    WHERE email IS NOT NULL AND revoked_at IS NULL;

CREATE TABLE decision_links (
    token_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants (id),
    approval_id TEXT NOT NULL,
    key_id TEXT NOT NULL,
    digest TEXT NOT NULL,
    expires_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    sent_at TEXT,
    used_at TEXT
);
CREATE UNIQUE INDEX decision_links_by_request ON decision_links (approval_id, key_id);
