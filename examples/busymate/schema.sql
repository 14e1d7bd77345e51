-- Busymate: a device-fleet app whose dashboard and iOS app stay in sync over private
-- broadcast channels authorized by RLS policies on realtime.messages.
--
-- Needs the Supabase-like roles (`authenticated`, ...) and `auth.uid()`; `realtide dev`
-- creates them, a Supabase database has them. realtide installs the `realtime` schema itself
-- at start, so run this after realtide has started once against the database.
--
-- Topics:
--   ws:<workspace_id>   firehose of the workspace's entries; members read, members write
--   device:<device_id>  per-device control; the device's owner and admins read and write
--   devices:all         every authenticated user reads; admins write
--   settings:global     every authenticated user reads; admins write

create table public.workspaces (
  id uuid primary key default gen_random_uuid(),
  name text not null
);

create table public.workspace_members (
  workspace_id uuid not null references public.workspaces on delete cascade,
  user_id uuid not null,
  primary key (workspace_id, user_id)
);
create index workspace_members_user on public.workspace_members (user_id);

create table public.profiles (
  user_id uuid primary key,
  is_admin boolean not null default false
);

create table public.devices (
  id uuid primary key default gen_random_uuid(),
  workspace_id uuid not null references public.workspaces on delete cascade,
  owner_id uuid not null,
  name text not null
);

create table public.entries (
  id bigint generated always as identity primary key,
  workspace_id uuid not null references public.workspaces on delete cascade,
  device_id uuid references public.devices on delete set null,
  body jsonb not null,
  created_at timestamptz not null default now()
);

-- Membership checks run as the table owner (security definer), so the policies below do not
-- depend on the caller's privileges on these tables and cannot recurse into their RLS.
-- Topic ids are compared as text: a malformed topic simply matches nothing.
create function public.busymate_is_member(workspace text) returns boolean
  language sql stable security definer set search_path = '' as $$
  select exists (
    select 1 from public.workspace_members m
     where m.workspace_id::text = workspace and m.user_id = (select auth.uid()))
$$;

create function public.busymate_is_admin() returns boolean
  language sql stable security definer set search_path = '' as $$
  select coalesce((select p.is_admin from public.profiles p where p.user_id = (select auth.uid())), false)
$$;

create function public.busymate_owns_device(device text) returns boolean
  language sql stable security definer set search_path = '' as $$
  select exists (
    select 1 from public.devices d
     where d.id::text = device and d.owner_id = (select auth.uid()))
$$;

grant execute on function public.busymate_is_member(text), public.busymate_is_admin(),
  public.busymate_owns_device(text) to authenticated;

-- Read (SELECT) policies: who may join, receive broadcasts and see presence.
create policy "busymate: members read their workspace firehose"
  on realtime.messages for select to authenticated
  using (realtime.topic() like 'ws:%'
         and public.busymate_is_member(substr(realtime.topic(), 4)));

create policy "busymate: device owner or admin reads device control"
  on realtime.messages for select to authenticated
  using (realtime.topic() like 'device:%'
         and (public.busymate_owns_device(substr(realtime.topic(), 8)) or public.busymate_is_admin()));

create policy "busymate: everyone reads the global channels"
  on realtime.messages for select to authenticated
  using (realtime.topic() in ('devices:all', 'settings:global'));

-- Write (INSERT) policies: who may send broadcasts and track presence.
create policy "busymate: members write their workspace channel"
  on realtime.messages for insert to authenticated
  with check (realtime.topic() like 'ws:%'
              and public.busymate_is_member(substr(realtime.topic(), 4)));

create policy "busymate: device owner or admin writes device control"
  on realtime.messages for insert to authenticated
  with check (realtime.topic() like 'device:%'
              and (public.busymate_owns_device(substr(realtime.topic(), 8)) or public.busymate_is_admin()));

create policy "busymate: admins write the global channels"
  on realtime.messages for insert to authenticated
  with check (realtime.topic() in ('devices:all', 'settings:global') and public.busymate_is_admin());

-- The firehose: every entry change is broadcast on ws:<workspace_id> as
-- {old_record, record, operation, table, schema, id}. The trigger function runs as its owner so
-- that it may insert into realtime.messages whoever changed the entry.
create function public.busymate_entries_firehose() returns trigger
  language plpgsql security definer set search_path = '' as $$
begin
  perform realtime.broadcast_changes(
    'ws:' || coalesce(new.workspace_id, old.workspace_id)::text,
    tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
  return null;
end
$$;

create trigger busymate_entries_firehose
  after insert or update or delete on public.entries
  for each row execute function public.busymate_entries_firehose();

-- Device changes go to the device's own control channel and to devices:all.
create function public.busymate_devices_changed() returns trigger
  language plpgsql security definer set search_path = '' as $$
begin
  perform realtime.broadcast_changes(
    'device:' || coalesce(new.id, old.id)::text,
    tg_op, tg_op, tg_table_name, tg_table_schema, new, old);
  perform realtime.send(
    jsonb_build_object('id', coalesce(new.id, old.id), 'operation', tg_op),
    'device_changed', 'devices:all', true);
  return null;
end
$$;

create trigger busymate_devices_changed
  after insert or update or delete on public.devices
  for each row execute function public.busymate_devices_changed();
