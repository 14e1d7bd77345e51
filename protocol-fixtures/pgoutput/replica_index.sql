-- setup (not recorded)
CREATE TABLE ri_idx (id int4 NOT NULL, code text NOT NULL, v int4);
CREATE UNIQUE INDEX ri_idx_code ON ri_idx (code);
ALTER TABLE ri_idx REPLICA IDENTITY USING INDEX ri_idx_code;
CREATE TABLE ri_nothing (id int4 PRIMARY KEY, v int4);
ALTER TABLE ri_nothing REPLICA IDENTITY NOTHING;

-- recorded statements
INSERT INTO ri_idx VALUES (1, 'k1', 10);
UPDATE ri_idx SET v = 11 WHERE code = 'k1';
UPDATE ri_idx SET code = 'k2' WHERE code = 'k1';
DELETE FROM ri_idx WHERE code = 'k2';
INSERT INTO ri_nothing VALUES (1, 1);
