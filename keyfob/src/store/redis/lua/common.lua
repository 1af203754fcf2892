local function num(x) if x then return tonumber(x) end return nil end
local function deadline(i, a)
  i = num(i); a = num(a)
  if i and a then return math.min(i, a) end
  return i or a
end
