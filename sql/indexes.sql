-- The runbook's "Add Indexes" list (Performance Optimization → Database Optimization).
-- Run by the monthly `create_indexes` item, one statement at a time, outside a transaction.
-- Orders table
CREATE INDEX CONCURRENTLY idx_orders_user_id_status ON orders(user_id, status);
CREATE INDEX CONCURRENTLY idx_orders_created_at ON orders(created_at DESC);
CREATE INDEX CONCURRENTLY idx_orders_symbol ON orders(symbol);
CREATE INDEX CONCURRENTLY idx_orders_user_id_created_at ON orders(user_id, created_at DESC);

-- Positions table
CREATE INDEX CONCURRENTLY idx_positions_portfolio_id ON positions(portfolio_id);
CREATE INDEX CONCURRENTLY idx_positions_symbol ON positions(symbol);

-- Transactions table
CREATE INDEX CONCURRENTLY idx_transactions_user_id_date ON transactions(user_id, transaction_date DESC);
