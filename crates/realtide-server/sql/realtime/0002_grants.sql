-- realtide migration 2: grants to the Supabase roles that exist in this database. Re-run by
-- every start (roles may be created after the first one), so it is written to be idempotent.
do $$
declare
  role_name text;
begin
  foreach role_name in array array['anon', 'authenticated', 'service_role'] loop
    if exists (select 1 from pg_roles where rolname = role_name) then
      execute format('grant usage on schema realtime to %I', role_name);
      execute format('grant select, insert, update on realtime.messages to %I', role_name);
      execute format('grant execute on function realtime.topic() to %I', role_name);
      execute format('grant execute on function realtime.send(jsonb, text, text, boolean) to %I', role_name);
      execute format('grant execute on function realtime.send_binary(bytea, text, text, boolean) to %I', role_name);
      execute format('grant execute on function realtime.broadcast_changes(text, text, text, text, text, record, record, text) to %I', role_name);
    end if;
  end loop;
end;
$$;
