-- The most the agent would pay for a resource whose service names its own price (an x402 URL): the payment's
-- amount is the price the service asked, which the guard decided on. NULL for a payment of a stated amount.
ALTER TABLE payments ADD COLUMN max_amount TEXT;
