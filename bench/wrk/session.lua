-- wrk script for scripts/bench. Env: COOKIES (file of session IDs, one a line;
-- empty = send no cookie), METHOD (GET or POST). Every route goes through this
-- same request() so the load generator does the same work for each.
local cookies = {}
local file = os.getenv("COOKIES")
if file and file ~= "" then
  for line in io.lines(file) do
    if line ~= "" then cookies[#cookies + 1] = "id=" .. line end
  end
end
local method = os.getenv("METHOD") or "GET"
local n = #cookies

function init(args)
  math.randomseed(os.time())
end

function request()
  if n > 0 then
    return wrk.format(method, nil, { Cookie = cookies[math.random(n)] })
  end
  return wrk.format(method, nil, nil)
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "RESULT rps=%.1f p99_us=%d requests=%d non2xx=%d errors=%d\n",
    summary.requests / (summary.duration / 1e6), latency:percentile(99),
    summary.requests, e.status, e.connect + e.read + e.write + e.timeout))
end
