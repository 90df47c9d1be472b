#!/usr/bin/env bash
# Walks through the README's grpcurl session against a real server on localhost:50051:
# list, sign up, log in, read and reset the invite link, register through it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=${BIN:-target/debug/label-studio-identity}
[[ -x $bin ]] || cargo build --locked --bin label-studio-identity

source .ci/tools.sh
grpcurl=$(install_grpcurl)

data=$(mktemp -d)
env -u DATABASE_URL LABEL_STUDIO_BASE_DATA_DIR="$data" IDENTITY_METRICS__PORT=0 IDENTITY_SERVER__HTTP_PORT=0 \
    "$bin" start --host 127.0.0.1 --port 50051 >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    "$bin" probe --addr 127.0.0.1:50051 >/dev/null 2>&1 && break
    sleep 0.1
done

passed=0
failed=0
check() { # name, expected substring, output
    if [[ $3 == *"$2"* ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "grpcurl: FAILED $1: expected '$2' in:" >&2
        echo "$3" >&2
    fi
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

S=labelstudio.identity.v1.IdentityService
out=$("$grpcurl" -plaintext localhost:50051 list)
check list "$S" "$out"
check list-health grpc.health.v1.Health "$out"

signup=$("$grpcurl" -plaintext -d '{"email":"Owner@Example.com","password":"owner-password"}' localhost:50051 $S/CreateUser)
check signup '"email": "owner@example.com"' "$signup"
api_token=$(field apiToken <<<"$signup")

login=$("$grpcurl" -plaintext -d '{"password":{"email":"owner@example.com","password":"owner-password"}}' localhost:50051 $S/Authenticate)
check login sessionToken "$login"
session=$(field sessionToken <<<"$login")

out=$("$grpcurl" -plaintext -d "{\"token\":\"$api_token\"}" localhost:50051 $S/Authenticate)
check token-login '"title": "Label Studio"' "$out"

link=$("$grpcurl" -plaintext -H "authorization: Token $api_token" localhost:50051 $S/GetInviteLink)
check invite '/user/signup/?token=' "$link"
old_url=$(field inviteUrl <<<"$link")

reset=$("$grpcurl" -plaintext -H "authorization: Bearer $session" localhost:50051 $S/ResetInviteLink)
new_url=$(field inviteUrl <<<"$reset")
check reset '/user/signup/?token=' "$reset"

out=$("$grpcurl" -plaintext -d "{\"invite\":\"$old_url\",\"email\":\"late@example.com\",\"password\":\"new-password\"}" localhost:50051 $S/RegisterWithInvite 2>&1 || true)
check old-link-refused INVITE_INVALID "$out"

out=$("$grpcurl" -plaintext -d "{\"invite\":\"$new_url\",\"email\":\"new@example.com\",\"password\":\"new-password\"}" localhost:50051 $S/RegisterWithInvite)
check register '"email": "new@example.com"' "$out"

out=$("$grpcurl" -plaintext -d '{"email":"x@example.com","password":"short"}' localhost:50051 $S/CreateUser 2>&1 || true)
check error-details '"reason":"PASSWORD_LENGTH"' "$out"

out=$("$grpcurl" -plaintext -H "authorization: Bearer $session" localhost:50051 $S/Logout)
check logout '{' "$out"

out=$("$grpcurl" -plaintext -d '{"service":"labelstudio.identity.v1.IdentityService"}' localhost:50051 grpc.health.v1.Health/Check)
check health SERVING "$out"

echo "grpcurl: $passed passed, $failed failed"
[[ $failed == 0 ]]
