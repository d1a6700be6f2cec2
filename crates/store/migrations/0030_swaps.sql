-- A swap is a payment into an exchange's router: what it buys and the least it may give (JSON of the domain's
-- SwapTerms), as quoted before the guard and bound by the approval's digest. NULL for every other payment.
ALTER TABLE payments ADD COLUMN swap TEXT;
