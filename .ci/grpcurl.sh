#!/usr/bin/env bash
# Walks through the README's grpcurl session against a real server on localhost:50051:
# list, sign up, log in, read and reset the invite link, register through it, the People page,
# the profile and password, the owner's tools, create a personal access token and refresh it
# into an access token, read the key set.
# Usage: grpcurl.sh [plaintext|tls|mtls]. With tls the server gets a certificate from a CA made
# here with openssl and grpcurl trusts it with -cacert; mtls also requires a client certificate
# from that CA. PORT moves the server off 50051.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=${1:-plaintext}
case $mode in
plaintext | tls | mtls) ;;
*)
    echo "usage: $0 [plaintext|tls|mtls]" >&2
    exit 2
    ;;
esac
port=${PORT:-50051}
bin=${BIN:-target/debug/label-studio-identity}
[[ -x $bin ]] || cargo build --locked --bin label-studio-identity

source .ci/tools.sh
grpcurl=$(install_grpcurl)

data=$(mktemp -d)
trap 'rm -rf "$data"' EXIT

quietly() { # runs a command, showing its output only when it fails
    "$@" >"$data/quiet.log" 2>&1 || { cat "$data/quiet.log" >&2; return 1; }
}
issue() { # name, subjectAltName, extendedKeyUsage: a key and a certificate signed by the CA
    quietly openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=$1" \
        -keyout "$data/$1.key" -out "$data/$1.csr"
    printf 'subjectAltName=%s\nextendedKeyUsage=%s\nbasicConstraints=CA:FALSE\n' "$2" "$3" >"$data/$1.ext"
    quietly openssl x509 -req -in "$data/$1.csr" -CA "$data/ca.crt" -CAkey "$data/ca.key" \
        -CAcreateserial -days 1 -extfile "$data/$1.ext" -out "$data/$1.crt"
}

server_tls=()
probe_tls=()
transport=(-plaintext)
if [[ $mode != plaintext ]]; then
    quietly openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
        -subj "/CN=grpcurl walk-through CA" -keyout "$data/ca.key" -out "$data/ca.crt"
    issue server "DNS:localhost,IP:127.0.0.1" serverAuth
    server_tls=(--tls-cert "$data/server.crt" --tls-key "$data/server.key")
    probe_tls=(--tls-ca "$data/ca.crt")
    transport=(-cacert "$data/ca.crt")
    if [[ $mode == mtls ]]; then
        issue client "DNS:grpcurl" clientAuth
        server_tls+=(--tls-client-ca "$data/ca.crt")
        probe_tls+=(--tls-cert "$data/client.crt" --tls-key "$data/client.key")
        transport+=(-cert "$data/client.crt" -key "$data/client.key")
    fi
fi

env -u DATABASE_URL LABEL_STUDIO_BASE_DATA_DIR="$data" IDENTITY_METRICS__PORT=0 IDENTITY_SERVER__HTTP_PORT=0 \
    "$bin" start --host 127.0.0.1 --port "$port" "${server_tls[@]}" >"$data/server.log" 2>&1 &
server=$!
trap 'kill $server 2>/dev/null; wait $server 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
    "$bin" probe --addr "127.0.0.1:$port" "${probe_tls[@]}" >/dev/null 2>&1 && break
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
call() { "$grpcurl" "${transport[@]}" "$@"; }
field() { python3 -c "import json,sys; print(json.load(sys.stdin)['$1'])"; }

S=labelstudio.identity.v1.IdentityService
out=$(call "localhost:$port" list)
check list "$S" "$out"
check list-health grpc.health.v1.Health "$out"

signup=$(call -d '{"email":"Owner@Example.com","password":"owner-password"}' "localhost:$port" $S/CreateUser)
check signup '"email": "owner@example.com"' "$signup"
api_token=$(field apiToken <<<"$signup")

login=$(call -d '{"password":{"email":"owner@example.com","password":"owner-password"}}' "localhost:$port" $S/Authenticate)
check login sessionToken "$login"
session=$(field sessionToken <<<"$login")

out=$(call -d "{\"token\":\"$api_token\"}" "localhost:$port" $S/Authenticate)
check token-login '"title": "Label Studio"' "$out"

link=$(call -H "authorization: Token $api_token" "localhost:$port" $S/GetInviteLink)
check invite '/user/signup/?token=' "$link"
old_url=$(field inviteUrl <<<"$link")

reset=$(call -H "authorization: Bearer $session" "localhost:$port" $S/ResetInviteLink)
new_url=$(field inviteUrl <<<"$reset")
check reset '/user/signup/?token=' "$reset"

out=$(call -d "{\"invite\":\"$old_url\",\"email\":\"late@example.com\",\"password\":\"new-password\"}" "localhost:$port" $S/RegisterWithInvite 2>&1 || true)
check old-link-refused INVITE_INVALID "$out"

out=$(call -d "{\"invite\":\"$new_url\",\"email\":\"new@example.com\",\"password\":\"new-password\"}" "localhost:$port" $S/RegisterWithInvite)
check register '"email": "new@example.com"' "$out"

new_id=$(python3 -c "import json,sys; print(json.load(sys.stdin)['user']['id'])" <<<"$out")
owner=(-H "authorization: Token $api_token")

out=$(call "${owner[@]}" "localhost:$port" $S/GetCurrentUser)
check whoami MEMBER_ROLE_OWNER "$out"

out=$(call "${owner[@]}" -d '{"pageSize":30,"query":"example.com"}' "localhost:$port" $S/ListMembers)
check list-members '"totalSize": 2' "$out"

out=$(call "${owner[@]}" -d "{\"userId\":\"$new_id\"}" "localhost:$port" $S/GetUser)
check get-user '"email": "new@example.com"' "$out"

out=$(call "${owner[@]}" -d '{"firstName":"Olga","updateMask":{"paths":["first_name"]}}' "localhost:$port" $S/UpdateProfile)
check update-profile '"firstName": "Olga"' "$out"

out=$(call "${owner[@]}" -d "{\"userId\":\"$new_id\"}" "localhost:$port" $S/RemoveMember)
check remove-member '{' "$out"
out=$(call "${owner[@]}" -d '{}' "localhost:$port" $S/ListMembers)
check removed-not-listed '"totalSize": 1' "$out"

out=$(call "${owner[@]}" -d "{\"userId\":\"$new_id\"}" "localhost:$port" $S/RestoreMember)
check restore-member '{' "$out"

out=$(call "${owner[@]}" -d '{"title":"Acme"}' "localhost:$port" $S/UpdateOrganization)
check update-organization '"title": "Acme"' "$out"

out=$(call "${owner[@]}" -d "{\"userId\":\"$new_id\"}" "localhost:$port" $S/DeleteUser)
check delete-user '{' "$out"
out=$(call "${owner[@]}" -d "{\"userId\":\"$new_id\"}" "localhost:$port" $S/GetUser 2>&1 || true)
check deleted-user-gone USER_NOT_FOUND "$out"

out=$(call "${owner[@]}" -d '{"currentPassword":"owner-password","newPassword":"owner-password-2"}' "localhost:$port" $S/ChangePassword)
check change-password sessionToken "$out"
out=$(call -d "{\"token\":\"$session\"}" "localhost:$port" $S/Authenticate 2>&1 || true)
check old-session-ended TOKEN_INVALID "$out"
session=$(python3 -c "import json,sys; print(json.load(sys.stdin)['sessionToken'])" <<<"$(call "${owner[@]}" -d '{"currentPassword":"owner-password-2","newPassword":"owner-password-3"}' "localhost:$port" $S/ChangePassword)")

pat=$(call -H "authorization: Token $api_token" "localhost:$port" $S/CreatePersonalAccessToken)
check create-pat '"token": "eyJ' "$pat"
pat_token=$(field token <<<"$pat")

out=$(call -d "{\"refresh\":\"$pat_token\"}" "localhost:$port" $S/RefreshAccessToken)
check refresh accessToken "$out"
access=$(field accessToken <<<"$out")

out=$(call -H "authorization: Bearer $access" "localhost:$port" $S/ListPersonalAccessTokens)
check list-pats truncatedToken "$out"

out=$(call "localhost:$port" $S/GetJwks)
check jwks OKP "$out"

out=$(call -d '{"email":"x@example.com","password":"short"}' "localhost:$port" $S/CreateUser 2>&1 || true)
check error-details '"reason":"PASSWORD_LENGTH"' "$out"

out=$(call -H "authorization: Bearer $session" "localhost:$port" $S/Logout)
check logout '{' "$out"

out=$(call -d '{"service":"labelstudio.identity.v1.IdentityService"}' "localhost:$port" grpc.health.v1.Health/Check)
check health SERVING "$out"

# The port speaks only what it was set up for.
case $mode in
tls)
    out=$("$grpcurl" -connect-timeout 3 -plaintext "localhost:$port" list 2>&1 || true)
    check plaintext-refused Failed "$out"
    ;;
mtls)
    # grpc-go retries a refused handshake until its deadline, so only the failure shows.
    out=$("$grpcurl" -connect-timeout 3 -cacert "$data/ca.crt" "localhost:$port" list 2>&1 || true)
    check no-client-cert-refused Failed "$out"
    ;;
esac
out=$("$bin" probe --addr "127.0.0.1:$port" "${probe_tls[@]}" 2>&1 || true)
check probe SERVING "$out"

echo "grpcurl ($mode): $passed passed, $failed failed"
[[ $failed == 0 ]]
