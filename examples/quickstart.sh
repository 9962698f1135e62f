#!/bin/sh
# Run it under a broker of its own:  ephemeral-broker run -- sh examples/quickstart.sh
set -eu
api() { curl -sS --unix-socket "$EPHEMERAL_PIPE" "$@"; echo; }

# Share a token for a minute.
api -X PUT http://localhost/v1/keys/db-token -d '{"value": {"token": "s3cr3t"}, "ttl_ms": 60000}'
api http://localhost/v1/keys/db-token

# Hand out unique slots: each worker gets the lowest number nobody holds.
api -X POST http://localhost/v1/leases/accounts -d '{"worker_id": "worker-a", "ttl_ms": 60000}'
api -X POST http://localhost/v1/leases/accounts -d '{"worker_id": "worker-b", "ttl_ms": 60000}'

# Count, list, and ask the broker how it is.
api -X POST http://localhost/v1/keys/finished/incr -d '{"ttl_ms": 60000}'
api "http://localhost/v1/keys?prefix=db-"
api http://localhost/v1/health
