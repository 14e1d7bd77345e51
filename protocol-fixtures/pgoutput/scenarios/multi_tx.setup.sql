CREATE TABLE accounts (id int4 PRIMARY KEY, balance int4 NOT NULL);
CREATE TABLE ledger (id bigserial PRIMARY KEY, account int4 NOT NULL, delta int4 NOT NULL);
