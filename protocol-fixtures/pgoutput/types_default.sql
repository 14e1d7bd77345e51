-- setup (not recorded)
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE DOMAIN posint AS int4 CHECK (VALUE > 0);
CREATE TABLE all_types (
  id int4 PRIMARY KEY,
  c_int2 int2, c_int8 int8, c_numeric numeric(12,3), c_float4 float4, c_float8 float8,
  c_bool bool, c_text text, c_varchar varchar(20), c_char char(5), c_uuid uuid,
  c_json json, c_jsonb jsonb, c_date date, c_time time, c_timetz timetz,
  c_timestamp timestamp, c_timestamptz timestamptz, c_interval interval, c_bytea bytea,
  c_int4_arr int4[], c_text_arr text[], c_mood mood, c_posint posint
);

-- recorded statements
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
