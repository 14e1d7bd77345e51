INSERT INTO ri_idx VALUES (1, 'k1', 10);
UPDATE ri_idx SET v = 11 WHERE code = 'k1';
UPDATE ri_idx SET code = 'k2' WHERE code = 'k1';
DELETE FROM ri_idx WHERE code = 'k2';
INSERT INTO ri_nothing VALUES (1, 1);
