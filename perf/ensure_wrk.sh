#!/usr/bin/env bash
# wrk (Debian's package) drives the cache-hit benchmark at > 1,000 req/s with little CPU.
# Optional: without it perf.bench falls back to its aiohttp load generator (and says so).
set -uo pipefail
command -v wrk >/dev/null && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "[bench] installing wrk from Debian"
  (apt-get install -y -q wrk >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q wrk >/dev/null; }) \
    || echo "[bench] could not install wrk; the cache-hit run will use perf.loadgen" >&2
else
  echo "[bench] wrk not installed (apt-get install wrk); the cache-hit run will use perf.loadgen" >&2
fi
exit 0
