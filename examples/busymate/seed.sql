-- Sample data for the README walk-through: two workspaces, three users, two devices.
--   ada   (11111111-...) member of Acme, owns the Acme kiosk
--   bert  (22222222-...) member of Beta, owns the Beta tablet
--   cleo  (33333333-...) admin, member of nothing
insert into public.workspaces (id, name) values
  ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', 'Acme'),
  ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', 'Beta');
insert into public.workspace_members (workspace_id, user_id) values
  ('aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '11111111-1111-4111-8111-111111111111'),
  ('bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '22222222-2222-4222-8222-222222222222');
insert into public.profiles (user_id, is_admin) values
  ('11111111-1111-4111-8111-111111111111', false),
  ('22222222-2222-4222-8222-222222222222', false),
  ('33333333-3333-4333-8333-333333333333', true);
insert into public.devices (id, workspace_id, owner_id, name) values
  ('dddddddd-0000-4000-8000-00000000000a', 'aaaaaaaa-aaaa-4aaa-8aaa-aaaaaaaaaaaa', '11111111-1111-4111-8111-111111111111', 'Acme kiosk'),
  ('dddddddd-0000-4000-8000-00000000000b', 'bbbbbbbb-bbbb-4bbb-8bbb-bbbbbbbbbbbb', '22222222-2222-4222-8222-222222222222', 'Beta tablet');
