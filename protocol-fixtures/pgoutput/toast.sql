-- setup (not recorded)
CREATE TABLE docs (id int4 PRIMARY KEY, body text, n int4);
CREATE TABLE docs_full (id int4 PRIMARY KEY, body text, n int4);
ALTER TABLE docs_full REPLICA IDENTITY FULL;

-- recorded statements
-- 12,000 random printable characters: not compressible below the TOAST threshold,
-- so the value is stored out of line and reported as unchanged ('u') when untouched.
SELECT setseed(0.42) \g /dev/null
INSERT INTO docs SELECT 1, string_agg(chr(32 + (random() * 94)::int), ''), 0 FROM generate_series(1, 12000);
INSERT INTO docs_full SELECT id, body, n FROM docs;
UPDATE docs SET n = 1 WHERE id = 1;
UPDATE docs_full SET n = 1 WHERE id = 1;
DELETE FROM docs WHERE id = 1;
