-- wrk script: POST multipart/form-data uploads (field "file") cycling through a list of photos,
-- and print a JSON summary at the end.  Photos: env PERF_WRK_PHOTOS, one path per line in a file.
local boundary = "perfbench7d3f9a1c"
local bodies = {}
local n = 0

local function load()
  local list = os.getenv("PERF_WRK_PHOTOS")
  for path in io.lines(list) do
    local f = assert(io.open(path, "rb"))
    local data = f:read("*a")
    f:close()
    local name = path:match("([^/]+)$")
    bodies[#bodies + 1] = "--" .. boundary .. "\r\n"
      .. 'Content-Disposition: form-data; name="file"; filename="' .. name .. '"\r\n'
      .. "Content-Type: image/jpeg\r\n\r\n" .. data .. "\r\n--" .. boundary .. "--\r\n"
  end
end

function init(args)
  load()
  n = math.random(#bodies)
end

function request()
  n = n % #bodies + 1
  return wrk.format("POST", nil, {["Content-Type"] = "multipart/form-data; boundary=" .. boundary}, bodies[n])
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    '\nPERF_JSON {"requests": %d, "duration_us": %d, "bytes": %d, "p50_us": %d, "p90_us": %d, "p99_us": %d, "mean_us": %.1f, "max_us": %d, "connect_errors": %d, "read_errors": %d, "write_errors": %d, "status_errors": %d, "timeouts": %d}\n',
    summary.requests, summary.duration, summary.bytes, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.mean, latency.max, e.connect, e.read, e.write, e.status, e.timeout))
end
