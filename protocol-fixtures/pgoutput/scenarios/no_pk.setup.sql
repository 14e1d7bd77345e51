CREATE TABLE nopk (a int4, b text);
CREATE TABLE nopk_full (a int4, b text);
ALTER TABLE nopk_full REPLICA IDENTITY FULL;
