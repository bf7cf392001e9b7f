#!/usr/bin/env bash
# A real worker and gateway with a read-only root filesystem, as in their pods: in a private
# mount namespace (root and util-linux's unshare needed; nothing changes outside it) every
# top-level directory is re-mounted read-only and /tmp is a fresh tmpfs (the pods' emptyDir and
# volumes). Classifies three photos, stores an upload and a feedback row, stops both with SIGTERM.
#   deploy/k8s/read_only_check.sh        (RABBITMQ_URL, REDIS_URL as for the services)
# Exit 0 when everything answered and both exited 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
if [ "${1:-}" != "--inside" ]; then
  exec unshare --mount --propagation private "$0" --inside
fi
repo=$PWD
python=$repo/.venv/bin/python
mount -t tmpfs -o size=512m tmpfs /tmp
for d in /bin /boot /etc /home /lib /lib64 /opt /root /run /sbin /srv /usr /var /work "$repo"; do
  if [ -d "$d" ] && [ ! -L "$d" ]; then mount --bind -o ro "$d" "$d"; fi
done
if touch "$repo/.read-only-probe" 2>/dev/null; then echo "[ro] error: $repo is writable" >&2; exit 1; fi
echo "[ro] root directories read-only; /tmp writable"

queue="k8s-read-only.$$"
port=18765 metrics=18766
export PYTHONPATH=$repo PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 ORT_THREADS=1 HOST=127.0.0.1
export QUEUE_NAME=$queue PORT=$port WORKER_METRICS_PORT=$metrics
export MODEL_PATH=$repo/models/efficientnet-lite0.onnx
export UPLOAD_DIR=/tmp/data/uploads FEEDBACK_CSV=/tmp/data/feedback/feedback.csv
"$python" -m classifier > /tmp/worker.log 2>&1 & worker=$!
"$python" -m gateway > /tmp/gateway.log 2>&1 & gateway=$!
status=0
for _ in $(seq 120); do curl -sf "http://127.0.0.1:$port/health/ready" >/dev/null && break; sleep 0.5; done
# Each photo with a JPEG comment of its own: a new SHA-256, a cache miss, so the worker runs.
image=$("$python" - "$port" <<'PY'
import json, sys, urllib.request, uuid
for photo in ("coffee", "chelsea", "astronaut"):
    body = open(f"tests/data/{photo}.jpg", "rb").read()
    comment = f"read-only check {uuid.uuid4().hex}".encode()
    body = body[:2] + b"\xff\xfe" + (len(comment) + 2).to_bytes(2, "big") + comment + body[2:]
    request = urllib.request.Request(f"http://127.0.0.1:{sys.argv[1]}/predict?top_k=1", data=body,
                                     headers={"Content-Type": "image/jpeg"})
    answer = json.load(urllib.request.urlopen(request, timeout=30))
    print(f"[ro] {photo}: {answer['prediction']} cached={answer['cached']}", file=sys.stderr)
print(answer["image"])
PY
) || status=1
curl -sf -o /dev/null "http://127.0.0.1:$port/uploads/$image" || status=1
curl -sf -H 'Content-Type: application/json' \
  -d "{\"image\": \"$image\", \"prediction\": \"astronaut\", \"score\": 0.5}" \
  "http://127.0.0.1:$port/feedback" >/dev/null || status=1
ok_jobs=$(curl -sf "http://127.0.0.1:$metrics/metrics" | sed -n 's/^classifier_jobs_total{outcome="ok"} //p')
echo "[ro] worker answered ${ok_jobs:-0} jobs"
[ "${ok_jobs%.*}" -ge 3 ] 2>/dev/null || status=1
kill -TERM "$worker" "$gateway"
wait "$worker" || { echo "[ro] worker exited $?"; status=1; }
wait "$gateway" || { echo "[ro] gateway exited $?"; status=1; }
grep -i "read-only file system" /tmp/worker.log /tmp/gateway.log && status=1
echo "[ro] uploads: $(ls /tmp/data/uploads | wc -l), feedback rows: $(($(wc -l < /tmp/data/feedback/feedback.csv) - 1))"
"$python" - "$queue" <<'PY' || true
import sys, urllib.request
for name in (sys.argv[1], sys.argv[1] + ".dead"):  # leave no queue behind (management API, local guest)
    request = urllib.request.Request(f"http://127.0.0.1:15672/api/queues/%2F/{name}", method="DELETE")
    request.add_header("Authorization", "Basic Z3Vlc3Q6Z3Vlc3Q=")
    try:
        urllib.request.urlopen(request, timeout=5)
    except OSError:
        pass
PY
if [ "$status" = 0 ]; then echo "[ro] PASS"; else echo "[ro] FAIL"; tail -20 /tmp/worker.log /tmp/gateway.log; fi
exit "$status"
