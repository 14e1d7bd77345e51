INSERT INTO nopk VALUES (1, 'one'), (2, NULL);
INSERT INTO nopk_full VALUES (1, 'one');
UPDATE nopk_full SET b = 'uno' WHERE a = 1;
DELETE FROM nopk_full WHERE a = 1;
