#!/usr/bin/env bash
# Checks docker-compose.yaml and the Dockerfile against the code, without a Docker engine:
#
#   1. docker-compose (Debian's 1.29; installed with apt-get when missing) accepts the file:
#      `docker-compose -f docker-compose.yaml config -q`.
#   2. (a) every SLUICE_* name in docker-compose.yaml and the Dockerfile is read by the code: an
#      option table entry in cmd/*/main.c ({"flag", "SLUICE_…", …}) or a getenv("SLUICE_…") in
#      internal/ or cmd/. A name no code reads is an error. (Names a service sets but its own
#      binary does not read are printed as notes.)
#   3. (b) every service built from our Dockerfile runs (`command:`) a binary the CMake build makes
#      (sluice-<svc> for each cmd/<svc>/main.c in CMakeLists.txt's service loop), the Dockerfile's
#      CMD too, and every such binary is run by some service. An `entrypoint:` shell must exec "$0",
#      the command's binary.
#   4. (c) every healthcheck URL of our services asks a path the service's handler serves
#      (e.g. /readyz) on the port it listens on; published container ports are listen ports;
#      the runtime image has the healthcheck's tool; `service_healthy` dependencies have a
#      healthcheck.
#
# Prints one line per check and closes with `N passed, N failed`; exits 1 on any failure.
# Usage: scripts/check_compose.sh   (from anywhere; reads the repository it lives in)
set -euo pipefail

REPO_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO_DIR"

passed=0
failed=0
pass() { passed=$((passed + 1)); printf 'ok   %s\n' "$*"; }
fail() { failed=$((failed + 1)); printf 'FAIL %s\n' "$*"; }
finish() {
  printf '\ncheck_compose: %d passed, %d failed\n' "$passed" "$failed"
  if ((failed > 0)); then exit 1; fi
  exit 0
}

COMPOSE_FILE=docker-compose.yaml
for f in "$COMPOSE_FILE" Dockerfile CMakeLists.txt; do
  if [[ -f $f ]]; then pass "$f exists"; else fail "$f is missing"; finish; fi
done

# --- docker-compose -------------------------------------------------------------------------------
if ! command -v docker-compose >/dev/null 2>&1; then
  echo "docker-compose not found: installing Debian's docker-compose"
  SUDO=()
  if ((EUID != 0)); then SUDO=(sudo); fi
  if ! "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose; then
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -q || true
    "${SUDO[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker-compose || true
  fi
fi
if command -v docker-compose >/dev/null 2>&1; then
  pass "docker-compose available ($(docker-compose version --short 2>/dev/null || echo '?'))"
else
  fail "docker-compose could not be installed"
  finish
fi

cfg_err=$(mktemp)
trap 'rm -f "$cfg_err"' EXIT
if docker-compose -f "$COMPOSE_FILE" config -q 2>"$cfg_err"; then
  pass "docker-compose -f $COMPOSE_FILE config -q"
else
  fail "docker-compose -f $COMPOSE_FILE config -q: $(tr '\n' ' ' <"$cfg_err")"
  finish
fi

# The normalised configuration (anchors merged, variables interpolated) is what the checks read.
# docker-compose is a Python program that depends on python3-yaml, so its python3 has yaml.
PY=
for p in /usr/bin/python3 python3; do
  if command -v "$p" >/dev/null 2>&1 && "$p" -c 'import yaml' 2>/dev/null; then PY=$p; break; fi
done
if [[ -z $PY ]]; then
  fail "no python3 with the yaml module (Debian: python3-yaml) to read the configuration"
  finish
fi

# --- (a), (b), (c) --------------------------------------------------------------------------------
cfg_out=$(mktemp)
trap 'rm -f "$cfg_err" "$cfg_out"' EXIT
docker-compose -f "$COMPOSE_FILE" config >"$cfg_out" 2>"$cfg_err" || true
py_rc=0
results=$("$PY" - "$REPO_DIR" "$COMPOSE_FILE" "$cfg_out" 2>&1 <<'PYEOF'
import glob, os, re, sys, yaml

repo, compose_file, cfg_path = sys.argv[1], sys.argv[2], sys.argv[3]
with open(cfg_path, encoding="utf-8") as f:
    cfg = yaml.safe_load(f)
services = cfg.get("services", {})
out = []
def ok(msg): out.append("PASS " + msg)
def bad(msg): out.append("FAIL " + msg)
def note(msg): out.append("NOTE " + msg)
def read(path):
    with open(os.path.join(repo, path), encoding="utf-8") as f:
        return f.read()

# What the code reads: option tables of cmd/<svc>/main.c and getenv() anywhere.
per_binary = {}     # service name -> set of SLUICE_* its option table names
listen_port = {}    # service name -> (env name, default port)
for main in sorted(glob.glob(os.path.join(repo, "cmd", "*", "main.c"))):
    svc = os.path.basename(os.path.dirname(main))
    text = read(os.path.relpath(main, repo))
    per_binary[svc] = set(re.findall(r'"(SLUICE_[A-Z0-9_]+)"', text))
    m = re.search(r'"(SLUICE_[A-Z]+_PORT)",\s*SL_OPT_INT,\s*&port,\s*"(\d+)"', text)
    if m:
        listen_port[svc] = (m.group(1), int(m.group(2)))
getenv_names = set()
for src in glob.glob(os.path.join(repo, "internal", "*.c")) + glob.glob(os.path.join(repo, "cmd", "*", "*.c")):
    getenv_names |= set(re.findall(r'getenv\(\s*"(SLUICE_[A-Z0-9_]+)"\s*\)', read(os.path.relpath(src, repo))))
known = set(getenv_names)
for names in per_binary.values():
    known |= names

# (a) every SLUICE_* name in the compose file and the Dockerfile is read somewhere.
for path in (compose_file, "Dockerfile"):
    names = sorted(set(re.findall(r"\bSLUICE_[A-Z0-9_]*[A-Z0-9]\b", read(path))))
    for n in names:
        readers = sorted(s for s, ns in per_binary.items() if n in ns)
        if n in getenv_names:
            readers.append("getenv")
        if readers:
            ok("(a) %s: %s is read by %s" % (path, n, ", ".join(readers)))
        else:
            bad("(a) %s: %s is read by no code (not in any cmd/*/main.c option table, no getenv)" % (path, n))

# The binaries the CMake build makes.
cmake = read("CMakeLists.txt")
built = set()
loop = re.search(r"foreach\(svc ([^)]*)\)(.*?)endforeach", cmake, re.S)
if loop and "add_executable(sluice-${svc}" in loop.group(2):
    for svc in loop.group(1).split():
        if os.path.exists(os.path.join(repo, "cmd", svc, "main.c")):
            built.add("sluice-" + svc)
for m in re.finditer(r"add_executable\((sluice-[a-z0-9_-]+)\s", cmake):
    built.add(m.group(1))
if built:
    ok("(b) the CMake build makes %s" % ", ".join(sorted(built)))
else:
    bad("(b) found no sluice-* executables in CMakeLists.txt")

# (b) commands of the services built from our Dockerfile.
ours = {}   # compose service -> sluice service name (api, sse, ...)
for name, s in services.items():
    if "build" not in s:
        note("(b) %s runs image %s (not ours): command not checked" % (name, s.get("image", "?")))
        continue
    cmd = s.get("command")
    if isinstance(cmd, str):
        cmd = cmd.split()
    if not cmd:
        bad("(b) %s has no command: (the image's CMD would run; name the binary)" % name)
        continue
    if cmd[0] in built:
        ok("(b) %s: command %s is built by CMake" % (name, cmd[0]))
        ours[name] = cmd[0][len("sluice-"):]
    else:
        bad("(b) %s: command %r is not a binary the CMake build makes (%s)" % (name, cmd[0], ", ".join(sorted(built))))
        continue
    ep = s.get("entrypoint")
    if ep:
        ep = ep if isinstance(ep, list) else ep.split()
        script = " ".join(ep)
        if ep[0].endswith("sh") and "-c" in ep and "$0" in script:
            ok("(b) %s: entrypoint %s execs \"$0\" (%s)" % (name, ep[0], cmd[0]))
        else:
            bad("(b) %s: entrypoint %r does not run the command's binary" % (name, ep))
run = {"sluice-" + v for v in ours.values()}
for b in sorted(built - run):
    bad("(b) %s is built but no compose service runs it" % b)
if built and built <= run:
    ok("(b) every built service binary runs in some compose service")
m = re.findall(r'^CMD\s+\["([^"]+)"', read("Dockerfile"), re.M)
if m:
    if m[-1] in built:
        ok("(b) Dockerfile CMD %s is built by CMake" % m[-1])
    else:
        bad("(b) Dockerfile CMD %s is not a binary the CMake build makes" % m[-1])

# (c) healthchecks. The routes each service's handler serves, from its source.
handler_src = {"api": "internal/sl_api.c", "sse": "internal/sl_sse.c", "ingest": "internal/sl_ingest.c",
               "persister": "cmd/persister/main.c"}
def served_paths(svc):
    src = handler_src.get(svc)
    if src is None or not os.path.exists(os.path.join(repo, src)):
        return None
    text = read(src)
    return set(re.findall(r'path_is\(req, "(/[^"]*)"\)', text)) | \
        set(re.findall(r'path_normalized\.len, H2O_STRLIT\("(/[^"]*)"\)', text))

dockerfile = read("Dockerfile")
final_stage = dockerfile.split("FROM ")[-1]
for name, s in services.items():
    hc = s.get("healthcheck")
    test = hc.get("test") if hc else None
    if isinstance(test, str):
        test = test.split()
    if name not in ours:
        if test:
            note("(c) %s: healthcheck of a service that is not ours, not checked" % name)
        continue
    svc = ours[name]
    env = s.get("environment") or {}
    port_env, port = listen_port.get(svc, (None, None))
    if port_env and env.get(port_env):
        port = int(env[port_env])
    if not test:
        if port is not None:
            note("(c) %s: no healthcheck although %s serves /readyz" % (name, svc))
        continue
    urls = [t for t in test if re.match(r"https?://", str(t))]
    if not urls:
        bad("(c) %s: healthcheck %r names no URL" % (name, test))
        continue
    tool = test[1] if test[0] in ("CMD", "CMD-SHELL") and len(test) > 1 else test[0]
    if re.search(r"\b%s\b" % re.escape(tool), final_stage):
        ok("(c) %s: healthcheck tool %s is installed in the runtime image" % (name, tool))
    else:
        bad("(c) %s: healthcheck tool %s is not installed in the Dockerfile's last stage" % (name, tool))
    paths = served_paths(svc)
    for u in urls:
        m = re.match(r"https?://([^/:]+)(?::(\d+))?(/[^?]*)?", u)
        upath, uport = m.group(3) or "/", int(m.group(2) or 80)
        if paths is None:
            bad("(c) %s: no known handler source for service %s" % (name, svc))
        elif upath in paths:
            ok("(c) %s: healthcheck path %s is served by sluice-%s (%s)" % (name, upath, svc, handler_src[svc]))
        else:
            bad("(c) %s: healthcheck path %s is not served by sluice-%s (serves %s)"
                % (name, upath, svc, ", ".join(sorted(paths))))
        if port is None:
            bad("(c) %s: sluice-%s has no listen port, but its healthcheck asks port %d" % (name, svc, uport))
        elif uport == port:
            ok("(c) %s: healthcheck port %d is the one sluice-%s listens on (%s)" % (name, uport, svc, port_env))
        else:
            bad("(c) %s: healthcheck asks port %d, sluice-%s listens on %d (%s)" % (name, uport, svc, port, port_env))

for name, svc in ours.items():
    s = services[name]
    port_env, port = listen_port.get(svc, (None, None))
    env = s.get("environment") or {}
    if port_env and env.get(port_env):
        port = int(env[port_env])
    for p in s.get("ports") or []:
        target = int(p["target"]) if isinstance(p, dict) else int(str(p).split(":")[-1].split("/")[0])
        if target == port:
            ok("(c) %s: published container port %d is sluice-%s's listen port" % (name, target, svc))
        else:
            bad("(c) %s: publishes container port %d, sluice-%s listens on %s" % (name, target, svc, port))
    # notes: variables this service sets that its own binary does not read
    for n in sorted(k for k in env if k.startswith("SLUICE_")):
        if n not in per_binary.get(svc, set()) and n not in getenv_names:
            note("(a) %s: %s is set, but sluice-%s does not read it" % (name, n, svc))

for name, s in services.items():
    deps = s.get("depends_on") or {}
    if isinstance(deps, dict):
        for dep, how in deps.items():
            if (how or {}).get("condition") == "service_healthy":
                if (services.get(dep) or {}).get("healthcheck"):
                    ok("(c) %s waits for %s to be healthy, and %s has a healthcheck" % (name, dep, dep))
                else:
                    bad("(c) %s waits for %s to be healthy, but %s has no healthcheck" % (name, dep, dep))

print("\n".join(out))
PYEOF
) || py_rc=$?

if [[ -z $results ]]; then
  fail "reading the configuration with $PY failed"
  finish
fi
while IFS= read -r line; do
  case $line in
    "PASS "*) pass "${line#PASS }" ;;
    "FAIL "*) fail "${line#FAIL }" ;;
    "NOTE "*) printf 'note %s\n' "${line#NOTE }" ;;
    *) printf '%s\n' "$line" ;;
  esac
done <<<"$results"
((py_rc == 0)) || fail "the checks in $PY ended with status $py_rc"
finish
