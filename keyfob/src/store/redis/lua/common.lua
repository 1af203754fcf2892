local function num(x) if x then return tonumber(x) end return nil end
local function deadline(i, a)
  i = num(i); a = num(a)
  if i and a then return math.min(i, a) end
  return i or a
end
-- One command for `list` from index `first` on (in slices, so a session
-- of thousands of keys stays inside Lua's stack limit).
local function many(cmd, h, list, first)
  for n = first or 1, #list, 512 do
    redis.call(cmd, h, unpack(list, n, math.min(n + 511, #list)))
  end
end
-- When Redis drops a key whose record's deadline is `e`: on the next whole
-- minute, so a session written many times a minute moves its key's
-- expiry once a minute, not on every write. (Loads go by the deadline
-- itself; the key only outlives it by less than a minute.)
local function drop_at(e)
  if e then return math.ceil(e / 60) * 60 end
  return nil
end
