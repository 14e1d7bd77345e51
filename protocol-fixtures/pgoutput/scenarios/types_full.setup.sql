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
ALTER TABLE all_types REPLICA IDENTITY FULL;
