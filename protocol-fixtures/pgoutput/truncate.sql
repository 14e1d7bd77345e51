-- setup (not recorded)
CREATE TABLE parent (id serial PRIMARY KEY);
CREATE TABLE child (id int4 PRIMARY KEY, parent_id int4 REFERENCES parent (id));
INSERT INTO parent DEFAULT VALUES;
INSERT INTO child VALUES (1, 1);

-- recorded statements
TRUNCATE child;
TRUNCATE parent RESTART IDENTITY CASCADE;
