-- A webhook failing since `failing_since` (no delivery since) is disabled once that is a day ago: nothing is sent
-- to it until an admin enables it again, and its cursor keeps its place.
ALTER TABLE webhooks ADD COLUMN failing_since TEXT;
ALTER TABLE webhooks ADD COLUMN disabled_at TEXT;
