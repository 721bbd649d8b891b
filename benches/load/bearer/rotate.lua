-- wrk script for benches/load-bearer.sh: every request carries the next bearer token from a
-- token file (one per line, written by mint.py), so a proxy with a verified-token cache sees a
-- new token on each request until the slice wraps.
--
--   wrk ... -s rotate.lua URL -- TOKENS_FILE FIRST COUNT NTHREADS
--
-- Uses tokens FIRST .. FIRST+COUNT-1 (0-based line numbers). Thread t of NTHREADS sends tokens
-- FIRST+t, FIRST+t+NTHREADS, ... (disjoint across threads) and wraps around inside its share
-- after COUNT/NTHREADS requests. At the end it prints one line:
--   bearer-rotate: sent=<requests handed to wrk> distinct=<distinct tokens sent> count=<COUNT>
-- so the report can state the token mix: with sent <= COUNT every token was new.

local threads = {}

function setup(thread)
   thread:set("tid", #threads)
   table.insert(threads, thread)
end

function init(args)
   local file, first, count, nthreads = args[1], tonumber(args[2]), tonumber(args[3]), tonumber(args[4])
   assert(file and first and count and nthreads, "usage: -- TOKENS_FILE FIRST COUNT NTHREADS")
   local host = wrk.headers["Host"] or (wrk.host .. ":" .. wrk.port)
   local pre = wrk.method .. " " .. wrk.path .. " HTTP/1.1\r\nHost: " .. host .. "\r\nAuthorization: Bearer "
   -- Prebuild this thread's requests (the whole request as one string), so request() costs a
   -- table lookup: the client core is shared with the backend and must not become the limit.
   reqs = {}
   local n, line_no = 0, 0
   local last = first + count - 1
   for line in io.lines(file) do
      if line_no > last then break end
      if line_no >= first and (line_no - first) % nthreads == tid then
         n = n + 1
         reqs[n] = pre .. line .. "\r\n\r\n"
      end
      line_no = line_no + 1
   end
   assert(n > 0, "no tokens for thread " .. tid .. " in " .. file)
   nreqs = n
   i = 0
   sent = 0
end

function request()
   i = i + 1
   if i > nreqs then i = 1 end
   sent = sent + 1
   return reqs[i]
end

function done(summary, latency, requests)
   local total_sent, distinct, count = 0, 0, 0
   for _, t in ipairs(threads) do
      local s, n = t:get("sent"), t:get("nreqs")
      total_sent = total_sent + s
      distinct = distinct + math.min(s, n)
      count = count + n
   end
   io.write(string.format("bearer-rotate: sent=%d distinct=%d count=%d\n", total_sent, distinct, count))
end
