-- wrk script for benches/load-audit.sh's paced runs: every connection waits WRK_DELAY_MS
-- (integer milliseconds, default 2) after each response before its next request, so the rate is
-- about connections / (delay + latency); the script picks the connection count for a target rate.
local d = tonumber(os.getenv("WRK_DELAY_MS") or "2")
function delay()
   return d
end
