#!/usr/bin/env bash
# Runs the shipped gateway configurations for real: nginx (deploy/gateway/nginx.conf) and Caddy
# (deploy/gateway/Caddyfile), from Debian's packages, in front of a small upstream that echoes
# the headers it receives (.ci/echo_upstream.py), with the release server behind their checks.
# Through each gateway it checks what the README promises: no credentials → 401 (API) or the
# login page (browser); API token, x-api-key and session cookie → the upstream sees the right
# Remote-*; forged Remote-User never reaches it; a reset token and an ended session → 401; a
# removed member → 403; the login page is open. Envoy has no Debian package: its ext_authz
# service gets the same cases in the Rust suite (tests/api/gateway.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bin=${BIN:-target/release/label-studio-identity}
[[ -x $bin ]] || cargo build --release --locked --bin label-studio-identity

if ! command -v nginx >/dev/null || ! command -v caddy >/dev/null; then
    echo "== installing nginx and caddy from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq nginx caddy >/dev/null
fi
# The packages may start system copies on port 80; ours run on free ports, theirs are stopped.
if command -v systemctl >/dev/null && systemctl is-system-running >/dev/null 2>&1; then
    systemctl stop nginx caddy 2>/dev/null || true
fi
if [[ -s /run/nginx.pid ]] && kill -0 "$(cat /run/nginx.pid)" 2>/dev/null; then
    nginx -s quit 2>/dev/null || true
fi

source .ci/tools.sh
grpcurl=$(install_grpcurl)

# Five distinct free ports, all held open together while they are picked: picked one by one,
# the kernel may hand out a port twice.
read -r grpc_port http_port upstream_port nginx_port caddy_port < <(python3 -c '
import socket
sockets = [socket.socket() for _ in range(5)]
for s in sockets:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in sockets))
')

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT

# The identity service trusts the gateways on localhost to name the client.
env -u DATABASE_URL LABEL_STUDIO_BASE_DATA_DIR="$work/data" IDENTITY_METRICS__PORT=0 \
    IDENTITY_SERVER__TRUSTED_PROXIES=127.0.0.1 \
    "$bin" start --host 127.0.0.1 --port "$grpc_port" --http-port "$http_port" \
    >"$work/identity.log" 2>&1 &
pids+=($!)
python3 .ci/echo_upstream.py "$upstream_port" &
pids+=($!)

# nginx: the shipped configuration with this run's ports, and logs and temporary files in the
# work folder so it runs as any user.
mkdir -p "$work/nginx"
sed -e "s/listen 80;/listen 127.0.0.1:$nginx_port;/" \
    -e "s/server 127.0.0.1:8000;/server 127.0.0.1:$upstream_port;/" \
    -e "s/server 127.0.0.1:8080;/server 127.0.0.1:$http_port;/" \
    -e "s|^http {|http {\n    access_log $work/nginx/access.log;\n    client_body_temp_path $work/nginx/body;\n    proxy_temp_path $work/nginx/proxy;\n    fastcgi_temp_path $work/nginx/fastcgi;\n    uwsgi_temp_path $work/nginx/uwsgi;\n    scgi_temp_path $work/nginx/scgi;|" \
    deploy/gateway/nginx.conf >"$work/nginx/nginx.conf"
for port in "$nginx_port" "$upstream_port" "$http_port"; do
    grep -q "127.0.0.1:$port;" "$work/nginx/nginx.conf" || {
        echo "gateways: nginx.conf no longer has the lines this script renders" >&2
        exit 1
    }
done
nginx_globals="daemon off; pid $work/nginx/nginx.pid; error_log $work/nginx/error.log;"
nginx -t -q -c "$work/nginx/nginx.conf" -g "$nginx_globals"
nginx -c "$work/nginx/nginx.conf" -g "$nginx_globals" &
pids+=($!)

# Caddy: the shipped Caddyfile takes its addresses from the environment.
LISTEN="http://127.0.0.1:$caddy_port" LABEL_STUDIO="127.0.0.1:$upstream_port" \
    IDENTITY_HTTP="127.0.0.1:$http_port" CADDY_ADMIN=off \
    XDG_DATA_HOME="$work/caddy" XDG_CONFIG_HOME="$work/caddy" \
    caddy run --config deploy/gateway/Caddyfile --adapter caddyfile >"$work/caddy.log" 2>&1 &
pids+=($!)

for _ in $(seq 300); do
    "$bin" probe --addr "127.0.0.1:$grpc_port" >/dev/null 2>&1 &&
        curl -s -o /dev/null "http://127.0.0.1:$nginx_port/user/login/" &&
        curl -s -o /dev/null "http://127.0.0.1:$caddy_port/user/login/" &&
        break
    sleep 0.1
done

passed=0
failed=0
check() { # name, expected, actual
    if [[ $2 == "$3" ]]; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "gateways: FAILED $1: expected '$2', got '$3'" >&2
    fi
}
# status URL [curl args...]: the HTTP status.
status() {
    local url=$1
    shift
    curl -s -o /dev/null -w '%{http_code}' "$@" "$url"
}
# echoed URL HEADER [curl args...]: the values the upstream received for HEADER, comma-joined.
echoed() {
    local url=$1 header=$2
    shift 2
    curl -s "$@" "$url" | python3 -c "import json,sys; print(','.join(json.load(sys.stdin)['headers'].get('$header', [])))"
}
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

S=labelstudio.identity.v1.IdentityService
rpc() { "$grpcurl" -plaintext "$@" "127.0.0.1:$grpc_port"; }
rpc_call() { # method, json, [grpcurl flags...]
    local method=$1 data=$2
    shift 2
    "$grpcurl" -plaintext "$@" -d "$data" "127.0.0.1:$grpc_port" "$S/$method"
}

# The first account owns the organization; a second one is removed from it, as Label Studio's
# owner does (the API has no call for it, so the database is written directly).
rpc_call CreateUser '{"email":"owner@example.com","password":"owner-password"}' >/dev/null
removed=$(rpc_call CreateUser '{"email":"removed@example.com","password":"removed-password"}')
removed_id=$(field "['user']['id']" <<<"$removed")
removed_token=$(field "['apiToken']" <<<"$removed")
python3 - "$work/data/identity.sqlite3" "$removed_id" <<'EOF'
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], timeout=10)
db.execute("UPDATE memberships SET deleted_at = joined_at WHERE user_id = ?", (int(sys.argv[2]),))
db.commit()
EOF

html='Accept: text/html,application/xhtml+xml,*/*;q=0.8'
json='Accept: application/json'

walk() { # gateway name, base URL
    local gw=$1 base=$2
    local email="$gw-user@example.com"
    local created user_id token session
    created=$(rpc_call CreateUser "{\"email\":\"$email\",\"password\":\"a-long-password\",\"firstName\":\"Ann\",\"lastName\":\"Lee\"}")
    user_id=$(field "['user']['id']" <<<"$created")
    token=$(field "['apiToken']" <<<"$created")
    session=$(field "['sessionToken']" <<<"$created")

    check "$gw: no credentials, API client" 401 "$(status "$base/api/projects" -H "$json")"
    check "$gw: no credentials, browser" "302 /user/login/?next=/projects/%3Fpage%3D2" \
        "$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' -H "$html" "$base/projects/?page=2" |
            sed -E 's#http://127\.0\.0\.1:[0-9]+##')"
    check "$gw: login page open" 200 "$(status "$base/user/login/" -H "$html")"
    check "$gw: login page without forged identity" "" \
        "$(echoed "$base/user/login/" remote-user -H 'Remote-User: 1')"

    check "$gw: API token, Remote-Email" "$email" \
        "$(echoed "$base/api/projects" remote-email -H "Authorization: Token $token")"
    check "$gw: API token, Remote-User" "$user_id" \
        "$(echoed "$base/api/projects" remote-user -H "Authorization: Token $token")"
    check "$gw: API token, Remote-Name" "Ann Lee" \
        "$(echoed "$base/api/projects" remote-name -H "Authorization: Token $token")"
    check "$gw: x-api-key, Remote-Email" "$email" \
        "$(echoed "$base/api/projects" remote-email -H "X-Api-Key: $token")"
    check "$gw: session cookie, Remote-User" "$user_id" \
        "$(echoed "$base/projects/" remote-user -H "$html" -H "Cookie: csrftoken=abc; sessionid=$session; theme=dark")"
    check "$gw: session cookie, Remote-Auth" "session" \
        "$(echoed "$base/projects/" remote-auth -H "Cookie: csrftoken=abc; sessionid=$session; theme=dark")"
    check "$gw: forged Remote-User replaced" "$user_id" \
        "$(echoed "$base/api/projects" remote-user -H "Authorization: Token $token" -H 'Remote-User: 1' -H 'Remote-Email: owner@example.com')"
    check "$gw: forged Remote-Email replaced" "$email" \
        "$(echoed "$base/api/projects" remote-email -H "Authorization: Token $token" -H 'Remote-Email: owner@example.com')"
    check "$gw: removed member" 403 "$(status "$base/api/projects" -H "Authorization: Token $removed_token")"

    rpc_call ResetApiToken '{}' -H "authorization: Token $token" >/dev/null
    rpc_call Logout '{}' -H "authorization: Bearer $session" >/dev/null
    check "$gw: reset API token" 401 "$(status "$base/api/projects" -H "$json" -H "Authorization: Token $token")"
    check "$gw: ended session, API client" 401 "$(status "$base/api/projects" -H "$json" -H "Cookie: sessionid=$session")"
    check "$gw: ended session, browser" 302 "$(status "$base/projects/" -H "$html" -H "Cookie: sessionid=$session")"
}

walk nginx "http://127.0.0.1:$nginx_port"
walk caddy "http://127.0.0.1:$caddy_port"

echo "gateways: $passed passed, $failed failed"
if [[ $failed != 0 ]]; then
    for log in identity.log caddy.log nginx/error.log; do
        echo "--- $log" >&2
        tail -n 30 "$work/$log" >&2 || true
    done
    exit 1
fi
