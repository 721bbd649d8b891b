-- wrk script for benches/load-sessions.sh: each request carries the next session cookie of the
-- file named by $COOKIES (one `name=value` a line), in turn, so every cookie is used as often.
local cookies = {}
for line in io.lines(os.getenv("COOKIES")) do
  if line ~= "" then cookies[#cookies + 1] = line end
end
assert(#cookies > 0, "no cookies in " .. tostring(os.getenv("COOKIES")))
local i = 0

request = function()
  i = i % #cookies + 1
  return wrk.format("GET", "/", { ["Cookie"] = cookies[i], ["Accept"] = "application/json" })
end
