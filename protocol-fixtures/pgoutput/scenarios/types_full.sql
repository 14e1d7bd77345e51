INSERT INTO all_types VALUES (
  1, -32768, 9007199254740993, 12345.678, 1.5, -2.25e-10,
  true, 'héllo "world"', 'varchar', 'ab', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
  '{"a": [1, 2, {"b": null}]}', '{"z": 1, "a": "x"}', '2024-02-29', '13:14:15.5', '13:14:15+02',
  '2024-02-29 13:14:15.123456', '2024-02-29 13:14:15.123456+00', '1 year 2 mons 3 days 04:05:06', '\xdeadbeef',
  '{1,2,NULL,4}', '{"a b","c,d",NULL}', 'happy', 7
);
INSERT INTO all_types (id) VALUES (2);
UPDATE all_types SET c_text = 'changed', c_int8 = -1 WHERE id = 1;
UPDATE all_types SET id = 3 WHERE id = 2;
DELETE FROM all_types WHERE id = 1;
