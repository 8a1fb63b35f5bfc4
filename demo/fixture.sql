-- The demo's trading database: a small TradeMaster-like schema with churn, modelled on
-- bench/fixture.sql. Loaded by `runbook demo` into a throwaway cluster.
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE TABLE orders (id bigserial PRIMARY KEY, user_id bigint NOT NULL, symbol text NOT NULL, side text NOT NULL,
  qty int NOT NULL, price numeric(12,2) NOT NULL, status text NOT NULL, created_at timestamptz NOT NULL);
CREATE TABLE positions (id bigserial PRIMARY KEY, portfolio_id bigint NOT NULL, symbol text NOT NULL, qty int NOT NULL,
  avg_price numeric(12,2));
CREATE TABLE transactions (id bigserial PRIMARY KEY, user_id bigint NOT NULL, amount numeric(14,2),
  transaction_date timestamptz NOT NULL);
INSERT INTO orders (user_id, symbol, side, qty, price, status, created_at)
  SELECT (random()*5000)::bigint, 'SYM'||(g%200), CASE WHEN g%2=0 THEN 'BUY' ELSE 'SELL' END, (random()*100)::int+1,
         (random()*5000)::numeric(12,2), (ARRAY['NEW','FILLED','CANCELLED','REJECTED'])[1+g%4], now() - (g||' seconds')::interval
  FROM generate_series(1, 60000) g;
INSERT INTO positions (portfolio_id, symbol, qty, avg_price)
  SELECT (random()*2000)::bigint, 'SYM'||(g%200), (random()*1000)::int, (random()*5000)::numeric(12,2) FROM generate_series(1, 15000) g;
INSERT INTO transactions (user_id, amount, transaction_date)
  SELECT (random()*5000)::bigint, (random()*100000)::numeric(14,2), now() - (g||' minutes')::interval FROM generate_series(1, 30000) g;
CREATE INDEX orders_user ON orders(user_id);
CREATE INDEX tx_user ON transactions(user_id);
-- churn: dead tuples for VACUUM to reclaim
UPDATE orders SET status = 'FILLED' WHERE id % 5 = 0;
DELETE FROM transactions WHERE id % 7 = 0;
DO $$ BEGIN FOR i IN 1..20 LOOP
  EXECUTE format('CREATE TABLE ref_%s (id int PRIMARY KEY, v text)', i);
  EXECUTE format('INSERT INTO ref_%s SELECT g, md5(g::text) FROM generate_series(1,500) g', i);
  EXECUTE format('UPDATE ref_%s SET v = v || ''x'' WHERE id %% 3 = 0', i);
END LOOP; END $$;
