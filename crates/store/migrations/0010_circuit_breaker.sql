-- The circuit breaker (a policy's velocity rules). A frozen session keeps its state 'active' and has `frozen`
-- set (the trip, as JSON): its money-moving calls are denied until a person unfreezes or kills it. Killed
-- outranks frozen.
ALTER TABLE sessions ADD COLUMN frozen TEXT;
-- When a person last unfroze or revived it: the breaker counts only the session's payments after this.
ALTER TABLE sessions ADD COLUMN breaker_since TEXT;
-- A velocity rule of scope `agent` counts the asking key's payments across its sessions.
CREATE INDEX payments_by_requester ON payments (tenant_id, requested_by, created_at);
