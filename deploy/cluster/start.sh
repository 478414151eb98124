#!/bin/sh
# Start the 3-node JetStream cluster of deploy/cluster/ on loopback, in the foreground.
# Clients: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
# Routes:  127.0.0.1:6222-6224. Stores: $DATA_DIR/cluster/n{1,2,3} (DATA_DIR default ./data).
# Ctrl-C stops all three. Then, in another shell:
#   export AUDIOPREP_NATS_URL=nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224
#   export AUDIOPREP_STREAM_REPLICAS=3
#   audioprep provision && audioprep api & audioprep projector & audioprep worker
# (`audioprep up --cluster` does all of this in one command.)
set -eu
here=$(cd "$(dirname "$0")" && pwd)
data=${DATA_DIR:-./data}
bin=${NATS_SERVER:-$(command -v nats-server || echo "$here/../../.venv/bin/nats-server")}
pids=""
trap 'kill $pids 2>/dev/null; wait' INT TERM EXIT
for n in 1 2 3; do
  mkdir -p "$data/cluster/n$n"
  "$bin" -c "$here/node$n.conf" -js -sd "$data/cluster/n$n" &
  pids="$pids $!"
done
echo "cluster up: nats://127.0.0.1:4222,nats://127.0.0.1:4223,nats://127.0.0.1:4224"
wait
