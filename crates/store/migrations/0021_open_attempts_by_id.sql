-- The open attempts in payment order, for reconciling them a page at a time: an index range of open attempts,
-- never every attempt ever made.
CREATE INDEX payment_attempts_open_by_id ON payment_attempts (payment_id) WHERE receipt IS NULL;
