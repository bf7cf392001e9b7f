#!/usr/bin/env bash
# Debian packages the test suite and the benchmark drive for real:
#   chromium        the browser tests (through Playwright; never `playwright install`)
#   docker-compose  validates docker-compose.yml offline (`docker-compose config -q`)
#   qemu-user       runs the int8 model as an AVX2 CPU without VNNI would (qemu-x86_64 -cpu Haswell)
#   kubectl         renders deploy/k8s offline (`kubectl kustomize`); Debian's kubernetes-client
#   wrk             drives the benchmark's cache hits (perf/wrk.py; C, one thread: a light load generator)
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v docker-compose >/dev/null || missing+=(docker-compose)
command -v qemu-x86_64 >/dev/null || missing+=(qemu-user)
command -v kubectl >/dev/null || missing+=(kubernetes-client)
command -v wrk >/dev/null || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
  echo "[packages] chromium, docker-compose, qemu-user, kubectl and wrk present"
  exit 0
fi
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "[packages] error: missing ${missing[*]}; install them with your package manager" >&2
  exit 1
fi
echo "[packages] installing ${missing[*]} from Debian"
apt-get update -q >/dev/null
DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null
