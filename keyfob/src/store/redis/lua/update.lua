local h = KEYS[1]
local now = tonumber(ARGV[1])
local m = redis.call('HMGET', h, 'v', 'i', 'a', 'moved', 'o', 'x', 'c', 's')
if m[4] then return {'0'} end
if not m[1] then
  if redis.call('EXISTS', h) == 0 then return {'0'} end
  return {'-1'}
end
-- Metadata the loader would refuse: the record reads as no session, so it
-- is not updated either. (Data values are checked only when loaded.)
for _, n in ipairs({1, 7, 8}) do if not tonumber(m[n]) then return {'-1'} end end
if (m[2] and not tonumber(m[2])) or (m[3] and not tonumber(m[3])) then return {'-1'} end
local was = deadline(m[2], m[3])
if was and now >= was then redis.call('DEL', h) return {'0'} end
-- Every change is gathered first and written with one HDEL and one HSET
-- (deletions first: a cleared key set again survives), and only fields
-- that change are written, so a write costs Redis what changed.
local set, del = {}, {}
local function put(k, v) set[#set + 1] = k set[#set + 1] = v end
if ARGV[6] == '1' then
  for _, k in ipairs(redis.call('HKEYS', h)) do
    if string.sub(k, 1, 2) == 'd:' then del[#del + 1] = k end
  end
end
for n = 11, #ARGV, 2 do
  if ARGV[n + 1] == '' then del[#del + 1] = 'd:' .. ARGV[n]
  else put('d:' .. ARGV[n], ARGV[n + 1]) end
end
if ARGV[2] ~= m[8] then put('s', ARGV[2]) end
if ARGV[3] == '' then
  if m[2] then del[#del + 1] = 'i' end
elseif ARGV[3] ~= m[2] then put('i', ARGV[3]) end
local owner = m[5]
if ARGV[4] == '-' then
  if owner then del[#del + 1] = 'o' end
  owner = nil
elseif string.sub(ARGV[4], 1, 1) == '=' then
  owner = string.sub(ARGV[4], 2)
  if owner ~= m[5] then
    if m[6] then del[#del + 1] = 'x' end
    m[6] = nil
    put('o', owner)
  end
end
if ARGV[5] == '-' then del[#del + 1] = 'e'
elseif string.sub(ARGV[5], 1, 1) == '=' then put('e', string.sub(ARGV[5], 2)) end
put('v', string.format('%.0f', tonumber(m[1]) + 1))
local e = deadline(ARGV[3] ~= '' and ARGV[3] or nil, m[3])
-- The owner set must outlive its sessions: ask the caller to push its TTL
-- when this deadline passes the watermark last pushed.
local mark = ''
if owner then
  if not e then
    if m[6] ~= 'inf' then mark = 'inf' end
  elseif m[6] ~= 'inf' and (not tonumber(m[6]) or e > tonumber(m[6])) then
    mark = tostring(e + tonumber(ARGV[8]))
  end
  if mark ~= '' then put('x', mark) end
end
if #del > 0 then many('HDEL', h, del) end
many('HSET', h, set)
if ARGV[7] ~= '' then
  local all = redis.call('HGETALL', h)
  redis.call('DEL', h)
  redis.call('HSET', h, 'moved', ARGV[7])
  redis.call('PEXPIRE', h, ARGV[9])
  local out = {'2', owner or '', e and tostring(e) or '', mark}
  for n = 1, #all do out[#out + 1] = all[n] end
  return out
end
-- The key's expiry is always `drop_at` of its record's deadline (create
-- and every update keep it so), so it is set only when that moves.
local drop = drop_at(e)
if drop ~= drop_at(was) then
  if drop then redis.call('EXPIREAT', h, drop) else redis.call('PERSIST', h) end
end
-- On the near cache's tracking connection: a write ends the key's
-- tracking, and this read files it again for the caller.
if ARGV[10] == '1' then redis.call('EXISTS', h) end
-- The version the change was applied to: the caller's copy is current
-- only when it was at that version.
return {'1', owner or '', mark, m[1]}
