-- A service refused the signed payment it was sent, while its authorization could still settle: JSON
-- {code, message, outstanding_until}. The payment stays open until the chain says how it ended.
ALTER TABLE payment_attempts ADD COLUMN refusal TEXT;
