CREATE TABLE docs (id int4 PRIMARY KEY, body text, n int4);
CREATE TABLE docs_full (id int4 PRIMARY KEY, body text, n int4);
ALTER TABLE docs_full REPLICA IDENTITY FULL;
