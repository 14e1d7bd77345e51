-- setup (not recorded)
CREATE TABLE nopk (a int4, b text);
CREATE TABLE nopk_full (a int4, b text);
ALTER TABLE nopk_full REPLICA IDENTITY FULL;

-- recorded statements
INSERT INTO nopk VALUES (1, 'one'), (2, NULL);
INSERT INTO nopk_full VALUES (1, 'one');
UPDATE nopk_full SET b = 'uno' WHERE a = 1;
DELETE FROM nopk_full WHERE a = 1;
