CREATE TABLE ri_idx (id int4 NOT NULL, code text NOT NULL, v int4);
CREATE UNIQUE INDEX ri_idx_code ON ri_idx (code);
ALTER TABLE ri_idx REPLICA IDENTITY USING INDEX ri_idx_code;
CREATE TABLE ri_nothing (id int4 PRIMARY KEY, v int4);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;
