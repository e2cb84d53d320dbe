#!/usr/bin/env bash
# Checks docs/openapi.yaml against the code and against running services. Starts nothing.
#
#   scripts/check_openapi.sh [--api=URL] [--sse=URL] [--ingest=URL] [--persister=URL] [--spec=FILE]
#
# Base URLs default to http://127.0.0.1:8080 (api), :8081 (sse), :8082 (ingest) and :8083
# (persister); an empty one (--ingest=) skips the live checks of that service.
#
# What it checks:
#   - the spec parses as YAML (python3 with yaml; else a minimal check: no tabs, the top-level
#     keys), and, when python3 has openapi_spec_validator, that it is valid OpenAPI 3.0;
#     with yaml: every $ref resolves, path parameters are declared, the schemas Message, Error,
#     Accepted and MessageList and the headers Idempotency-Key, Retry-After and Last-Event-ID
#     are there, and every error code README.md documents and every code the HTTP handlers send
#     is in Error's enum;
#   - the routes: ROUTES below is what the handlers serve (service, method, path); every one of
#     them must be in the spec and every documented one in ROUTES, and every path literal in the
#     handlers' sources must be in ROUTES (so a route added to the code fails until documented);
#   - live: every documented path+method of every service, sent a minimal valid request (streams
#     with a short timeout), answers something other than 404 not_found, with a status the spec
#     documents for it, and a JSON body that fits the documented schema (with python3 yaml);
#     an unknown path answers 404 with the Error shape.
#     POST /v1/messages posts one message (channel openapi-check), which PATCH edits and DELETE
#     (last) deletes; POST /v1/messages/batch posts two; POST /v1/ingest sends "stop".
#
# The spec is read with awk too (it keeps a fixed layout, see its header), so the route checks
# work without python (SLUICE_CHECK_PYTHON=none tries that); with python the awk reading is
# compared with the YAML one.
# Prints one line per check and closes with `N passed, N failed`; exits 1 on any failure.
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The routes the code serves: service METHOD path. HEAD (answered like GET) is left out, and so is
# OPTIONS on paths browsers do not preflight (api and sse answer OPTIONS on any path).
#   api:       internal/sl_api.c     sl_api_handle
#   sse:       internal/sl_sse.c     sl_sse_handle (streams: internal/sl_stream*.c; pulls: internal/sl_pull.c)
#   ingest:    internal/sl_ingest.c  sl_ingest_handle
#   persister: cmd/persister/main.c  on_req
ROUTES=(
  "api POST /v1/messages"
  "api GET /v1/messages"
  "api OPTIONS /v1/messages"
  "sse GET /v1/messages"
  "sse OPTIONS /v1/messages"
  "api GET /v1/messages/{id}"
  "api PATCH /v1/messages/{id}"
  "api DELETE /v1/messages/{id}"
  "api OPTIONS /v1/messages/{id}"
  "api POST /v1/messages/batch"
  "api OPTIONS /v1/messages/batch"
  "api GET /healthz"
  "api GET /readyz"
  "api GET /metrics"
  "sse GET /"
  "sse GET /index.html"
  "sse GET /client.js"
  "sse GET /config.json"
  "sse GET /favicon.ico"
  "sse GET /v1/stream"
  "sse OPTIONS /v1/stream"
  "sse GET /v1/ws"
  "sse OPTIONS /v1/ws"
  "sse GET /healthz"
  "sse GET /readyz"
  "sse GET /metrics"
  "sse GET /v1/channels"
  "sse GET /v1/channels/{channel}/presence"
  "ingest GET /v1/ingest"
  "ingest POST /v1/ingest"
  "ingest GET /healthz"
  "ingest GET /readyz"
  "ingest GET /metrics"
  "persister GET /healthz"
  "persister GET /readyz"
  "persister GET /metrics"
)
declare -A HANDLER_SRC=(
  [api]=internal/sl_api.c
  [sse]=internal/sl_sse.c
  [ingest]=internal/sl_ingest.c
  [persister]=cmd/persister/main.c
)
SERVICES=(api sse ingest persister)

declare -A BASE=(
  [api]=http://127.0.0.1:8080
  [sse]=http://127.0.0.1:8081
  [ingest]=http://127.0.0.1:8082
  [persister]=http://127.0.0.1:8083
)
SPEC=$REPO_DIR/docs/openapi.yaml
for arg in "$@"; do
  case $arg in
    --api=* | --sse=* | --ingest=* | --persister=*)
      name=${arg%%=*}
      name=${name#--}
      BASE[$name]=${arg#*=}
      BASE[$name]=${BASE[$name]%/}
      ;;
    --spec=*) SPEC=${arg#*=} ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "check_openapi.sh: unknown argument '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
note() { printf 'note %s\n' "$*"; }
finish() {
  printf '\ncheck_openapi: %d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}
# Python lines: "PASS msg" / "FAIL msg" / "NOTE msg".
relay() {
  local line
  while IFS= read -r line; do
    case $line in
      "PASS "*) pass "${line#PASS }" ;;
      "FAIL "*) fail "${line#FAIL }" ;;
      "NOTE "*) note "${line#NOTE }" ;;
      "") ;;
      *) printf '%s\n' "$line" ;;
    esac
  done
}

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

echo "== spec $SPEC"
if [[ ! -f $SPEC ]]; then
  fail "spec $SPEC does not exist"
  finish
fi
pass "spec exists"

# --- YAML ----------------------------------------------------------------------------------------
# SLUICE_CHECK_PYTHON: the python3 to use, or "none" to try the checks without one.
PY=
for p in ${SLUICE_CHECK_PYTHON:-python3 /usr/bin/python3}; do
  [[ $p != none ]] || break
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' 2>/dev/null; then PY=$p; break; fi
done
if [[ -n $PY ]]; then
  if err=$("$PY" -c 'import sys, yaml; yaml.safe_load(open(sys.argv[1], encoding="utf-8"))' "$SPEC" 2>&1); then
    pass "spec parses as YAML ($PY, PyYAML)"
  else
    fail "spec does not parse as YAML: ${err##*$'\n'}"
    finish
  fi
else
  note "no python3 with yaml (Debian: python3-yaml): minimal YAML check only"
  if grep -q $'\t' "$SPEC"; then fail "spec contains tab characters (YAML forbids them in indentation)"; else pass "spec has no tabs"; fi
  missing=()
  for key in openapi info servers paths components; do
    grep -q "^$key:" "$SPEC" || missing+=("$key")
  done
  if ((${#missing[@]} == 0)); then pass "spec has the top-level keys openapi, info, servers, paths, components"; else fail "spec lacks top-level keys: ${missing[*]}"; fi
  if grep -Eq '^openapi: *"?3\.0\.[0-9]+"?$' "$SPEC"; then pass "spec says openapi: 3.0.x"; else fail "spec does not say openapi: 3.0.x"; fi
  odd=$(awk '!/^[[:space:]]*(#|$)/ { match($0, /^ */); if (RLENGTH % 2) print NR }' "$SPEC" | head -5 | tr '\n' ' ')
  if [[ -z $odd ]]; then pass "spec indentation is in steps of two"; else fail "spec lines with odd indentation: $odd"; fi
fi

# --- documented routes (awk) ------------------------------------------------------------------------
# One line per service, method and path: "service METHOD path status,status,...".
awk_routes() {
  awk '
    function flush() {
      if (method != "" && nosv > 0) for (i = 1; i <= nosv; i++) printf "%s %s %s %s\n", osv[i], method, path, codes
      else if (method != "") for (i = 1; i <= nsv; i++) printf "%s %s %s %s\n", sv[i], method, path, codes
      method = ""; codes = ""; inresp = 0; nosv = 0
    }
    function aliases(line, out,    s, names, n, i) {
      s = line; sub(/^[^[]*\[/, "", s); sub(/\].*$/, "", s); gsub(/[ *]/, "", s)
      n = split(s, names, ",")
      for (i = 1; i <= n; i++) out[i] = (names[i] in service) ? service[names[i]] : "?" names[i]
      return n
    }
    /^[^ #]/ { flush(); section = $1; path = ""; next }
    section == "servers:" && /^  - &/ { anchor = substr($2, 2); next }
    section == "servers:" && /^    x-service:/ { service[anchor] = $2; next }
    section != "paths:" { next }
    /^  [^ #]/ { flush(); path = $1; sub(/:$/, "", path); nsv = 0; next }
    /^    servers: *\[/ { nsv = aliases($0, sv); next }
    method != "" && /^      servers: *\[/ { nosv = aliases($0, osv); next }
    /^    [^ #]/ {
      flush()
      m = $1; sub(/:$/, "", m)
      if (m ~ /^(get|put|post|delete|options|head|patch|trace)$/) method = toupper(m)
      next
    }
    method != "" && /^      [^ #]/ { inresp = ($1 == "responses:"); next }
    method != "" && inresp && /^        [^ #]/ {
      c = $1; sub(/:$/, "", c); gsub(/"/, "", c); gsub(/\047/, "", c)
      codes = codes (codes == "" ? "" : ",") c
      next
    }
    END { flush() }
  ' "$SPEC" | sort
}
awk_routes >"$TMP/spec_routes"
n_spec=$(wc -l <"$TMP/spec_routes")
if ((n_spec > 0)); then
  pass "read $n_spec documented operations (service, method, path) from the spec"
else
  fail "found no operations in the spec (its layout changed? see its header)"
fi
if grep -q '^?' "$TMP/spec_routes"; then
  fail "path-level servers name unknown aliases: $(grep '^?' "$TMP/spec_routes" | tr '\n' ';')"
fi

# --- structure (python) -----------------------------------------------------------------------------
if [[ -n $PY ]]; then
  py_rc=0
  "$PY" - "$SPEC" "$TMP/spec_routes" "$REPO_DIR" >"$TMP/structure.out" 2>&1 <<'PYEOF' || py_rc=$?
import glob, os, re, sys, yaml

spec_path, routes_path, repo = sys.argv[1:4]
with open(spec_path, encoding="utf-8") as f:
    spec = yaml.safe_load(f)
def ok(m): print("PASS " + m)
def bad(m): print("FAIL " + m)
def note(m): print("NOTE " + m)

try:
    from openapi_spec_validator import validate
except ImportError:
    validate = None
if validate is None:
    note("python3 has no openapi_spec_validator: the OpenAPI schema itself is not checked")
else:
    try:
        validate(spec)
        ok("spec is valid OpenAPI (openapi_spec_validator)")
    except Exception as e:
        bad("spec is not valid OpenAPI: %s" % str(e).splitlines()[0])

v = str(spec.get("openapi", ""))
(ok if re.match(r"^3\.0\.\d+$", v) else bad)("openapi version is 3.0.x (%s)" % v)

# every $ref resolves
refs = []
def walk(o):
    if isinstance(o, dict):
        for k, x in o.items():
            if k == "$ref" and isinstance(x, str):
                refs.append(x)
            else:
                walk(x)
    elif isinstance(o, list):
        for x in o:
            walk(x)
walk(spec)
def resolve(ref):
    if not ref.startswith("#/"):
        return None
    node = spec
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node
unresolved = sorted({r for r in refs if resolve(r) is None})
if unresolved:
    bad("$refs that do not resolve: %s" % ", ".join(unresolved))
else:
    ok("all %d $refs resolve" % len(refs))

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
def deref(o):
    while isinstance(o, dict) and "$ref" in o:
        o = resolve(o["$ref"])
    return o

# the same routes as the awk reading
yaml_routes = set()
problems = []
for path, item in (spec.get("paths") or {}).items():
    for method in METHODS:
        op = item.get(method)
        if op is None:
            continue
        servers = op.get("servers") or item.get("servers") or spec.get("servers") or []
        codes = ",".join(str(c) for c in (op.get("responses") or {}))
        if not op.get("responses"):
            problems.append("%s %s has no responses" % (method.upper(), path))
        params = [deref(p) for p in (item.get("parameters") or []) + (op.get("parameters") or [])]
        declared = {p.get("name") for p in params if p and p.get("in") == "path"}
        for name in re.findall(r"\{([^}]+)\}", path):
            if name not in declared:
                problems.append("%s %s: path parameter {%s} is not declared" % (method.upper(), path, name))
        for s in servers:
            yaml_routes.add("%s %s %s %s" % (s.get("x-service", "?"), method.upper(), path, codes))
with open(routes_path, encoding="utf-8") as f:
    awk_routes = {l.strip() for l in f if l.strip()}
if yaml_routes == awk_routes:
    ok("the awk reading of the spec equals the YAML reading (%d operations)" % len(yaml_routes))
else:
    bad("awk and YAML readings differ (spec layout?): only YAML: %s; only awk: %s"
        % (sorted(yaml_routes - awk_routes), sorted(awk_routes - yaml_routes)))
if problems:
    for p in problems:
        bad(p)
else:
    ok("every operation has responses and declares its path parameters")

comp = spec.get("components") or {}
schemas = comp.get("schemas") or {}
def req(name, keys, sub=None):
    s = deref(schemas.get(name))
    if s is None:
        bad("schema %s is missing" % name)
        return
    node = s
    for k in sub or []:
        node = deref((node.get("properties") or {}).get(k)) or {}
    props = set((node.get("properties") or {}).keys())
    missing = [k for k in keys if k not in props]
    where = name + ("." + ".".join(sub) if sub else "")
    if missing:
        bad("schema %s lacks properties %s" % (where, ", ".join(missing)))
    else:
        ok("schema %s has %s" % (where, ", ".join(keys)))
req("Message", ["id", "channel", "author", "text", "source", "created_at", "seq"])
req("Error", ["error"])
req("Error", ["code", "message", "field"], ["error"])
req("Accepted", ["id", "channel", "created_at"])
req("MessageList", ["messages", "next"])

# documented headers
headers = set()
def collect_headers(o):
    if isinstance(o, dict):
        for k, x in o.items():
            if k == "headers" and isinstance(x, dict):
                headers.update(h.lower() for h in x)
            if k == "parameters" and isinstance(x, list):
                for p in x:
                    p = deref(p)
                    if isinstance(p, dict) and p.get("in") == "header":
                        headers.add(p["name"].lower())
            collect_headers(x)
        if o.get("in") == "header" and "name" in o:
            headers.add(o["name"].lower())
    elif isinstance(o, list):
        for x in o:
            collect_headers(x)
collect_headers(spec.get("paths"))
for h in ("Idempotency-Key", "Retry-After", "Last-Event-ID"):
    (ok if h.lower() in headers else bad)("header %s is documented on an operation" % h)

# error codes: README's and the HTTP handlers' are all in Error.code's enum
enum = set(((((deref(schemas.get("Error")) or {}).get("properties") or {}).get("error") or {})
            .get("properties") or {}).get("code", {}).get("enum") or [])
readme = os.path.join(repo, "README.md")
if os.path.exists(readme):
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    codes = set()
    for line in text.splitlines():
        m = re.match(r"^\|\s*[0-9]{3}(\s*/\s*[0-9]{3})?\s*\|(.*?)\|", line)
        if m:
            codes |= set(re.findall(r"`([a-z_]+)`", m.group(2)))
    missing = sorted(codes - enum)
    if not codes:
        note("found no error-code table in README.md")
    elif missing:
        bad("README error codes missing from the spec's Error.code: %s" % ", ".join(missing))
    else:
        ok("all %d error codes of README.md's table are in Error.code" % len(codes))
srcs = [os.path.join(repo, p) for p in ("internal/sl_api.c", "internal/sl_sse.c", "internal/sl_pull.c",
                                         "internal/sl_ingest.c",
                                         "internal/sl_http.c", "internal/sl_auth.c", "cmd/persister/main.c")]
srcs = [p for p in srcs if os.path.exists(p)]
srcs += sorted(glob.glob(os.path.join(repo, "internal", "sl_stream*.c"))) # the core and every transport
if srcs:
    codes = set()
    for p in srcs:
        with open(p, encoding="utf-8") as f:
            # 404, "not_found"  or  401, r == X ? "unauthorized" : "invalid_token"
            for a, b in re.findall(r'\b[1-5][0-9]{2},\s*(?:[^,"]*\?\s*"([a-z_]+)"\s*:\s*)?"([a-z_]+)"', f.read()):
                codes |= {c for c in (a, b) if c}
    missing = sorted(codes - enum)
    if missing:
        bad("error codes the HTTP handlers send but Error.code lacks: %s" % ", ".join(missing))
    else:
        ok("all %d error codes the HTTP handlers send are in Error.code" % len(codes))
PYEOF
  relay <"$TMP/structure.out"
  ((py_rc == 0)) || fail "the structure checks ($PY) ended with status $py_rc"
fi

# --- code routes vs spec --------------------------------------------------------------------------------
echo "== routes"
cut -d' ' -f1-3 "$TMP/spec_routes" | sort -u >"$TMP/spec_keys"
printf '%s\n' "${ROUTES[@]}" | sort -u >"$TMP/code_keys"
while IFS= read -r r; do
  if grep -qxF "$r" "$TMP/spec_keys"; then pass "served by the code, documented: $r"; else fail "served by the code but not in the spec: $r"; fi
done <"$TMP/code_keys"
while IFS= read -r r; do
  grep -qxF "$r" "$TMP/code_keys" || fail "documented but not in the code's route list: $r"
done <"$TMP/spec_keys"
if cmp -s "$TMP/spec_keys" "$TMP/code_keys"; then pass "every documented route is in the code's route list"; fi

# Path literals in the handlers' sources must all be in ROUTES (the list above is kept by hand).
for svc in "${SERVICES[@]}"; do
  src=$REPO_DIR/${HANDLER_SRC[$svc]}
  if [[ ! -f $src ]]; then
    note "no $src: the route list of $svc is not compared with its source"
    continue
  fi
  # (path_is calls, prefix literals, and route tables' {"/path", handle_...} entries)
  found=$({ grep -oE 'path_is\(req, "/[^"]*"\)|path_normalized\.len, H2O_STRLIT\("/[^"]*"\)|prefix = "/[^"]*"|\{"/[^"]*", handle_' "$src" || true; } |
    sed -E 's/.*"(\/[^"]*)".*/\1/; s#^(/.*)/$#\1/{id}#' | sort -u)
  missing=()
  for p in $found; do
    printf '%s\n' "${ROUTES[@]}" | grep -qE "^$svc [A-Z]+ $(printf '%s' "$p" | sed 's/[][\.*^$/{}]/\\&/g')\$" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    pass "every path in ${HANDLER_SRC[$svc]} is in the route list ($(echo "$found" | tr '\n' ' '))"
  else
    fail "paths in ${HANDLER_SRC[$svc]} missing from the route list (and the spec?): ${missing[*]}"
  fi
done

# --- live -------------------------------------------------------------------------------------------
echo "== live (api ${BASE[api]:-skipped}, sse ${BASE[sse]:-skipped}, ingest ${BASE[ingest]:-skipped}, persister ${BASE[persister]:-skipped})"
UPGRADE_HEADERS=(-H 'Connection: Upgrade' -H 'Upgrade: websocket' -H 'Sec-WebSocket-Version: 13'
  -H 'Sec-WebSocket-Key: c2x1aWNlLW9wZW5hcGktY2g=')
posted_id=
n=0
# probe N URL METHOD [curl args...]: writes $TMP/probe.N.{body,status,ctype}
probe() {
  local id=$1 url=$2 method=$3 out
  shift 3
  out=$(curl -s -X "$method" -o "$TMP/probe.$id.body" -w '%{http_code} %{content_type}' "$@" "$url" 2>/dev/null) || true
  printf '%s\n' "${out%% *}" >"$TMP/probe.$id.status"
  printf '%s\n' "${out#* }" >"$TMP/probe.$id.ctype"
}
# is_not_found FILE [MESSAGE]: the body is a not_found error (with that message, if given).
is_not_found() {
  grep -q '"code":"not_found"' "$1" && { [[ -z ${2:-} ]] || grep -qF "\"message\":\"$2\"" "$1"; }
}

: >"$TMP/manifest"
# POST first: its id serves GET, PATCH and (last) DELETE /v1/messages/{id}.
sort -t' ' -k2,2r "$TMP/spec_routes" >"$TMP/spec_routes_ordered"
while read -r svc method path codes; do
  base=${BASE[$svc]:-}
  if [[ -z $base ]]; then
    note "skipped $svc $method $path (no base URL)"
    continue
  fi
  n=$((n + 1))
  url=$base$path
  args=(-m 5)
  what=""
  case "$method $path" in
    "POST /v1/messages")
      args+=(-H 'Content-Type: application/json' -H "Idempotency-Key: check-openapi-$$-$RANDOM"
        --data "{\"channel\":\"openapi-check\",\"author\":\"check_openapi\",\"text\":\"openapi check $(date +%s)\"}")
      ;;
    "GET /v1/messages")
      if [[ $svc == sse ]]; then url+="?after=0&limit=1"; else url+="?limit=1"; fi ;;
    "GET /v1/messages/{id}")
      if [[ -n $posted_id ]]; then
        url=$base/v1/messages/$posted_id
        what=" (the message just posted)"
      else
        url=$base/v1/messages/01a20f58-27ce-73cd-8a94-dbd9140140e4
        what=" (an id that does not exist: nothing was posted)"
      fi
      ;;
    "OPTIONS /v1/messages/{id}") url=$base/v1/messages/01a20f58-27ce-73cd-8a94-dbd9140140e4 ;;
    "PATCH /v1/messages/{id}" | "DELETE /v1/messages/{id}")
      url=$base/v1/messages/${posted_id:-01a20f58-27ce-73cd-8a94-dbd9140140e4}
      [[ -n $posted_id ]] && what=" (the message just posted)" || what=" (an id that does not exist: nothing was posted)"
      [[ $method == PATCH ]] && args+=(-H 'Content-Type: application/json' --data '{"text":"openapi check, edited"}')
      ;;
    "POST /v1/messages/batch")
      args+=(-H 'Content-Type: application/json' -H "Idempotency-Key: check-openapi-batch-$$-$RANDOM"
        --data '[{"channel":"openapi-check","author":"check_openapi","text":"batch 1"},{"channel":"openapi-check","author":"check_openapi","text":"batch 2"}]')
      ;;
    "GET /v1/stream") url+="?history=1"; args=(-N -m 2) ;;
    "GET /v1/channels") url+="?limit=10" ;;
    "GET /v1/channels/{channel}/presence") url=$base/v1/channels/general/presence ;;
    "GET /v1/ws") args=(-N -m 2 "${UPGRADE_HEADERS[@]}") ;;
    "POST /v1/ingest") args+=(-H 'Content-Type: application/json' --data '{"command":"stop"}') ;;
  esac
  probe "$n" "$url" "$method" "${args[@]}"
  # A message is readable (and editable) once the persister stored it: give it a few seconds.
  if [[ $path == "/v1/messages/{id}" && $method != OPTIONS && -n $posted_id ]]; then
    for _ in $(seq 1 50); do
      [[ $(cat "$TMP/probe.$n.status") == 404 || $(cat "$TMP/probe.$n.status") == 409 &&
        $method == PATCH && $(cat "$TMP/probe.$n.body") == *not_stored_yet* ]] || break
      sleep 0.2
      probe "$n" "$url" "$method" "${args[@]}"
    done
  fi
  status=$(cat "$TMP/probe.$n.status")
  if [[ "$method $path" == "POST /v1/messages" && $status == 202 ]]; then
    posted_id=$(sed -n 's/.*"id":"\([^"]*\)".*/\1/p' "$TMP/probe.$n.body")
  fi
  label="$svc $method $path$what"
  if [[ $status == 000 ]]; then
    fail "$label: no answer from $url"
    continue
  fi
  # Any 404 not_found fails, except for an id that does not exist, where only the router's
  # ("no such endpoint") does.
  router_msg=
  [[ $what == *"does not exist"* ]] && router_msg="no such endpoint"
  if [[ $status == 404 ]] && is_not_found "$TMP/probe.$n.body" "$router_msg"; then
    fail "$label: 404 not_found ($(head -c 200 "$TMP/probe.$n.body"))"
    continue
  fi
  if [[ ,$codes, == *",$status,"* || ,$codes, == *",default,"* ]]; then
    pass "$label: $status, documented ($codes)"
  else
    fail "$label: $status is not a documented status ($codes): $(head -c 200 "$TMP/probe.$n.body")"
  fi
  printf '%s %s %s %s %s\n' "$n" "$svc" "$method" "$path" "$status" >>"$TMP/manifest"
done <"$TMP/spec_routes_ordered"

for svc in "${SERVICES[@]}"; do
  base=${BASE[$svc]:-}
  [[ -n $base ]] || continue
  n=$((n + 1))
  probe "$n" "$base/no/such/path" GET -m 5
  status=$(cat "$TMP/probe.$n.status")
  if [[ $status == 404 ]] && is_not_found "$TMP/probe.$n.body"; then
    pass "$svc GET /no/such/path: 404 not_found"
  else
    fail "$svc GET /no/such/path: expected 404 not_found, got $status $(head -c 200 "$TMP/probe.$n.body")"
  fi
  printf '%s %s GET /no/such/path 404\n' "$n" "$svc" >>"$TMP/manifest"
done

# Bodies against the documented schemas.
if [[ -n $PY && -s $TMP/manifest ]]; then
  py_rc=0
  "$PY" - "$SPEC" "$TMP" >"$TMP/bodies.out" 2>&1 <<'PYEOF' || py_rc=$?
import json, os, re, sys, yaml

spec_path, tmp = sys.argv[1:3]
with open(spec_path, encoding="utf-8") as f:
    spec = yaml.safe_load(f)

def resolve(ref):
    node = spec
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node
def deref(o):
    while isinstance(o, dict) and "$ref" in o:
        o = resolve(o["$ref"])
    return o

TYPES = {"object": dict, "array": list, "string": str, "boolean": bool}
def check(value, schema, where):
    """Returns a list of problems (a small subset of JSON Schema: what this spec uses)."""
    schema = deref(schema) or {}
    if value is None:
        return [] if schema.get("nullable") else ["%s is null" % where]
    if "oneOf" in schema:
        if any(not check(value, s, where) for s in schema["oneOf"]):
            return []
        return ["%s matches none of oneOf" % where]
    t = schema.get("type")
    if t == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return ["%s is not an integer" % where]
    elif t in TYPES and not isinstance(value, TYPES[t]):
        return ["%s is not of type %s" % (where, t)]
    if "enum" in schema and value not in schema["enum"]:
        return ["%s=%r not in %s" % (where, value, schema["enum"])]
    out = []
    if t == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        for k in schema.get("required") or []:
            if k not in value:
                out.append("%s lacks %s" % (where, k))
        for k, x in value.items():
            if k in props:
                out += check(x, props[k], where + "." + k)
            elif schema.get("additionalProperties") is False:
                out.append("%s has unknown property %s" % (where, k))
    if t == "array":
        for i, x in enumerate(value[:20]):
            out += check(x, schema.get("items") or {}, "%s[%d]" % (where, i))
    return out

error_schema = {"$ref": "#/components/schemas/Error"}
with open(os.path.join(tmp, "manifest"), encoding="utf-8") as f:
    rows = [l.split() for l in f if l.strip()]
for n, svc, method, path, status in rows:
    with open(os.path.join(tmp, "probe.%s.ctype" % n), encoding="utf-8") as f:
        ctype = f.read().strip()
    try:
        with open(os.path.join(tmp, "probe.%s.body" % n), "rb") as f:
            body = f.read()
    except FileNotFoundError:  # curl writes no file for an empty body
        body = b""
    label = "%s %s %s %s" % (svc, method, path, status)
    if path == "/no/such/path":
        schema, want = error_schema, "application/json"
    else:
        op = spec["paths"][path][method.lower()]
        resp = deref((op.get("responses") or {}).get(status) or (op.get("responses") or {}).get(int(status)))
        content = (resp or {}).get("content") or {}
        if not content:
            continue
        base = ctype.split(";")[0].strip()
        if base not in content:
            print("FAIL %s: Content-Type %s is not documented (%s)" % (label, ctype, ", ".join(content)))
            continue
        want = base
        schema = content[base].get("schema")
    if want != "application/json" or not schema:
        continue
    try:
        value = json.loads(body.decode("utf-8"))
    except Exception as e:
        print("FAIL %s: the body is not JSON (%s): %r" % (label, e, body[:120]))
        continue
    problems = check(value, schema, "body")
    if problems:
        print("FAIL %s: the body does not fit the schema: %s" % (label, "; ".join(problems[:5])))
    else:
        print("PASS %s: the JSON body fits the documented schema" % label)
PYEOF
  relay <"$TMP/bodies.out"
  ((py_rc == 0)) || fail "the body checks ($PY) ended with status $py_rc"
fi

finish
