-- What a decision was about: the SHA-256 digest of the exact action (session, tool, arguments) the person
-- approved, edited into or rejected. Only an action with the approved digest runs. NULL for requests decided
-- before digests were recorded.
ALTER TABLE approval_requests ADD COLUMN decided_digest TEXT;
