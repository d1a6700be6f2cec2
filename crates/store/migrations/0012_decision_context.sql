-- What a person needs to decide a request, as it stood when it was filed (a JSON object): the agent's and the
-- session's names, the policy and the checks that sent it, the payee's history and the budget after it.
ALTER TABLE approval_requests ADD COLUMN context TEXT;
-- A payee's history in the tenant (paid before? how much in the last 30 days?), read when a request is filed.
CREATE INDEX payments_by_recipient ON payments (tenant_id, recipient, created_at);
