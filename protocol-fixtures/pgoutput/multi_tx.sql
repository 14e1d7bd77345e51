-- setup (not recorded)
CREATE TABLE accounts (id int4 PRIMARY KEY, balance int4 NOT NULL);
CREATE TABLE ledger (id bigserial PRIMARY KEY, account int4 NOT NULL, delta int4 NOT NULL);

-- recorded statements
BEGIN;
INSERT INTO accounts VALUES (1, 100), (2, 50);
UPDATE accounts SET balance = balance - 30 WHERE id = 1;
INSERT INTO ledger (account, delta) VALUES (1, -30);
DELETE FROM accounts WHERE id = 2;
COMMIT;
INSERT INTO ledger (account, delta) VALUES (2, 5);
