-- benches/load-body.sh: every request is Airflow's bulk task-instance PATCH with ENTRIES entities,
-- each naming its own DAG, and the bearer token.
--   wrk -s patch.lua URL -- TOKEN ENTRIES
local token, entries
function init(args)
  token = args[1]
  entries = tonumber(args[2] or "10")
  local items = {}
  for i = 1, entries do
    items[i] = string.format(
      '{"dag_id":"etl_%d","dag_run_id":"r1","task_id":"load_%d","new_state":"success"}', i, i)
  end
  local body = '{"actions":[{"action":"update","entities":[' .. table.concat(items, ",") .. ']}]}'
  wrk.method = "PATCH"
  wrk.body = body
  wrk.headers["Authorization"] = "Bearer " .. token
  wrk.headers["Content-Type"] = "application/json"
end
