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
#   5. (d) the clusters and their exposure: three CockroachDB and three RabbitMQ nodes; every
#      SLUICE_DB_URL (libpq multi-host, with connect_timeout) names every CockroachDB node and
#      every SLUICE_AMQP_URL (comma-separated) every RabbitMQ node; a service whose binary reads
#      one of them sets it; nothing but the api and sse ports is published on every interface
#      (short or long syntax) and an --insecure server publishes nothing; --cache and
#      --max-sql-memory are absolute sizes; every healthcheck has a start_period; the RabbitMQ
#      nodes share one Erlang cookie, list each other for classic config peer discovery and load
#      definitions that parse as JSON, in which each service's user exists, has the password the
#      nodes are given, and has what its code needs; only the persister may write to the live
#      exchange, only sse to the presence exchange, and only the api and ingest to the default
#      exchange (the persist queue's way in).
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
    # path_is calls, and route tables' {"/path", handle_...} entries (sl_sse.c)
    return set(re.findall(r'path_is\(req, "(/[^"]*)"\)', text)) | \
        set(re.findall(r'path_normalized\.len, H2O_STRLIT\("(/[^"]*)"\)', text)) | \
        set(re.findall(r'\{"(/[^"]*)", handle_', text))

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

# (d) the compose cluster: every node named in every URL, nothing published without credentials,
# per-service RabbitMQ users, absolute memory sizes, start periods. What this reads of the
# definitions and the RabbitMQ configuration is found through the mount at /etc/sluice.
import json
from urllib.parse import unquote

def command_words(s):
    c = s.get("command")
    return c.split() if isinstance(c, str) else list(c or [])

def node_name(name):
    return services[name].get("hostname") or name

crdb_nodes = sorted(node_name(n) for n, s in services.items()
                    if str(s.get("image", "")).startswith("cockroachdb/cockroach")
                    and command_words(s)[:1] == ["start"])
mq_nodes = sorted(n for n, s in services.items() if str(s.get("image", "")).startswith("rabbitmq:"))
mq_hosts = sorted(node_name(n) for n in mq_nodes)
if len(crdb_nodes) >= 3:
    ok("(d) %d CockroachDB nodes: %s" % (len(crdb_nodes), ", ".join(crdb_nodes)))
else:
    bad("(d) %d CockroachDB nodes (%s); three survive one stopping" % (len(crdb_nodes), ", ".join(crdb_nodes)))
if len(mq_nodes) >= 3:
    ok("(d) %d RabbitMQ nodes: %s" % (len(mq_nodes), ", ".join(mq_hosts)))
else:
    bad("(d) %d RabbitMQ nodes (%s); a quorum queue on three survives one stopping" % (len(mq_nodes), ", ".join(mq_hosts)))

def env_of(s):
    e = s.get("environment") or {}
    if isinstance(e, list):
        e = dict(x.split("=", 1) if "=" in x else (x, None) for x in e)
    return e

# SLUICE_DB_URL: a libpq URL naming every CockroachDB node, with a connect_timeout.
for name, svc in sorted(ours.items()):
    env = env_of(services[name])
    url = env.get("SLUICE_DB_URL")
    if url is None:
        if "SLUICE_DB_URL" in per_binary.get(svc, set()):
            bad("(d) %s: sluice-%s reads SLUICE_DB_URL, but it is not set (the default is 127.0.0.1)" % (name, svc))
        continue
    m = re.match(r"^postgres(?:ql)?://(?:([^@/]*)@)?([^/?]*)(?:/([^?]*))?(?:\?(.*))?$", url)
    if not m:
        bad("(d) %s: SLUICE_DB_URL %r is not a libpq URL" % (name, url))
        continue
    hosts = [h.split(":")[0] for h in m.group(2).split(",")]
    ports = [h.split(":")[1] if ":" in h else "26257" for h in m.group(2).split(",")]
    params = dict(p.split("=", 1) for p in (m.group(4) or "").split("&") if "=" in p)
    if sorted(hosts) == crdb_nodes and all(p == "26257" for p in ports):
        ok("(d) %s: SLUICE_DB_URL names every CockroachDB node (%s)" % (name, ",".join(hosts)))
    else:
        bad("(d) %s: SLUICE_DB_URL names %s, the CockroachDB nodes are %s (port 26257)"
            % (name, ",".join(hosts), ",".join(crdb_nodes)))
    ct = params.get("connect_timeout", "")
    if ct.isdigit() and 1 <= int(ct) <= 10:
        ok("(d) %s: SLUICE_DB_URL has connect_timeout=%s (per host, so at most %d s to find a live node)"
           % (name, ct, int(ct) * len(hosts)))
    else:
        bad("(d) %s: SLUICE_DB_URL needs connect_timeout between 1 and 10 s (has %r): libpq waits that long "
            "on a dead host before it tries the next" % (name, ct or None))

# The RabbitMQ definitions and configuration the nodes mount.
def mounted_dir(s, target):
    for v in s.get("volumes") or []:
        src, dst = (v.get("source"), v.get("target")) if isinstance(v, dict) else (v.split(":")[0], v.split(":")[1])
        if dst == target and src:
            return src if os.path.isabs(src) else os.path.normpath(os.path.join(repo, src))
    return None

defs, defs_path, mq_conf = None, None, None
mq_dirs = {mounted_dir(services[n], "/etc/sluice") for n in mq_nodes}
if len(mq_dirs) == 1 and None not in mq_dirs:
    d = mq_dirs.pop()
    defs_path = os.path.join(d, "definitions.json")
    try:
        with open(defs_path, encoding="utf-8") as f:
            defs = json.load(f)
        ok("(d) %s parses as JSON" % os.path.relpath(defs_path, repo))
    except (OSError, ValueError) as e:
        bad("(d) %s: %s" % (os.path.relpath(defs_path, repo), e))
    try:
        with open(os.path.join(d, "rabbitmq.conf"), encoding="utf-8") as f:
            mq_conf = f.read()
    except OSError as e:
        bad("(d) RabbitMQ configuration: %s" % e)
elif mq_nodes:
    bad("(d) the RabbitMQ nodes do not all mount one directory at /etc/sluice (definitions, rabbitmq.conf)")

if mq_conf is not None:
    conf = dict((k.strip(), v.strip()) for k, v in
                (l.split("=", 1) for l in mq_conf.splitlines() if "=" in l and not l.lstrip().startswith("#")))
    listed = sorted(v for k, v in conf.items() if k.startswith("cluster_formation.classic_config.nodes."))
    if conf.get("cluster_formation.peer_discovery_backend") in ("classic_config", "rabbit_peer_discovery_classic_config") \
            and listed == sorted("rabbit@" + h for h in mq_hosts):
        ok("(d) rabbitmq.conf: classic config peer discovery lists every node (%s)" % ", ".join(listed))
    else:
        bad("(d) rabbitmq.conf: classic_config peer discovery must list rabbit@ each of %s (lists %s)"
            % (", ".join(mq_hosts), ", ".join(listed) or "none"))
    if conf.get("load_definitions"):
        ok("(d) rabbitmq.conf loads definitions at boot (%s)" % conf["load_definitions"])
    else:
        bad("(d) rabbitmq.conf has no load_definitions: the per-service users would not exist")

# The Erlang cookie: one value on every node, or they cannot cluster.
cookies = {n: env_of(services[n]).get("RABBITMQ_ERLANG_COOKIE") for n in mq_nodes}
if mq_nodes and all(cookies.values()) and len(set(cookies.values())) == 1:
    ok("(d) the Erlang cookie (RABBITMQ_ERLANG_COOKIE) is the same on %s" % ", ".join(mq_nodes))
elif mq_nodes and all(cookies.values()):
    bad("(d) RABBITMQ_ERLANG_COOKIE differs between the RabbitMQ nodes (%d values): they cannot cluster"
        % len(set(cookies.values())))
elif mq_nodes:
    bad("(d) RABBITMQ_ERLANG_COOKIE is not set on %s (the nodes need one shared cookie)"
        % ", ".join(n for n, c in sorted(cookies.items()) if not c))

users, perms, placeholder = {}, {}, {}
if isinstance(defs, dict):
    for u in defs.get("users") or []:
        users[u.get("name")] = u
        m = re.fullmatch(r"@([A-Z0-9_]+)@", str(u.get("password", "")))
        if m:
            placeholder[u.get("name")] = m.group(1)
    for p in defs.get("permissions") or []:
        if p.get("vhost") == "/":
            perms[p.get("user")] = p
    if "guest" in users:
        bad("(d) the definitions create the guest user (guest:guest is known to everyone)")
    for u in sorted(users):
        var = placeholder.get(u)
        if var is None:
            if "password_hash" not in users[u]:
                bad("(d) definitions: user %s has neither an @MQ_PASSWORD_…@ placeholder nor a password_hash" % u)
            continue
        unset = [n for n in mq_nodes if not env_of(services[n]).get(var)]
        if unset:
            bad("(d) definitions: user %s's password %s is not set on %s" % (u, var, ", ".join(unset)))
        else:
            ok("(d) definitions: user %s's password comes from %s, set on every node" % (u, var))
        if u not in perms:
            bad("(d) definitions: user %s has no permissions on vhost /" % u)

# SLUICE_AMQP_URL: every RabbitMQ node, as the service's own user, with that user's password.
user_of = {}
for name, svc in sorted(ours.items()):
    env = env_of(services[name])
    urls = env.get("SLUICE_AMQP_URL")
    if urls is None:
        if "SLUICE_AMQP_URL" in per_binary.get(svc, set()):
            bad("(d) %s: sluice-%s reads SLUICE_AMQP_URL, but it is not set (the default is guest@127.0.0.1)" % (name, svc))
        continue
    parsed = [re.match(r"^amqps?://(?:([^:@/]*)(?::([^@/]*))?@)?([^:/?]+)(?::(\d+))?(/.*)?$", u.strip())
              for u in urls.split(",")]
    if not all(parsed):
        bad("(d) %s: SLUICE_AMQP_URL is not a comma-separated list of AMQP URLs" % name)
        continue
    hosts = [m.group(3) for m in parsed]
    if sorted(hosts) == mq_hosts:
        ok("(d) %s: SLUICE_AMQP_URL names every RabbitMQ node (%s)" % (name, ",".join(hosts)))
    else:
        bad("(d) %s: SLUICE_AMQP_URL names %s, the RabbitMQ nodes are %s" % (name, ",".join(hosts), ",".join(mq_hosts)))
    logins = {unquote(m.group(1) or "guest") for m in parsed}
    passwords = {unquote(m.group(2) or "guest") for m in parsed}
    if len(logins) != 1:
        bad("(d) %s: the URLs of SLUICE_AMQP_URL log in as different users (%s)" % (name, ", ".join(sorted(logins))))
        continue
    user = logins.pop()
    user_of[name] = user
    if len(passwords) != 1:
        bad("(d) %s: the URLs of SLUICE_AMQP_URL give %s different passwords" % (name, user))
        continue
    password = passwords.pop()
    if user == "guest" or user not in users:
        bad("(d) %s: logs in to RabbitMQ as %r, which is not a user of the definitions" % (name, user))
        continue
    var = placeholder.get(user)
    expect = {env_of(services[n]).get(var) for n in mq_nodes} if var else set()
    if var and expect == {password}:
        ok("(d) %s: logs in as %s, a user of the definitions, with the password the nodes give it (%s)" % (name, user, var))
    elif var:
        bad("(d) %s: logs in as %s with a password other than the nodes' %s" % (name, user, var))

# Per-user permissions against what each service may do: only the persister writes to the live
# exchange (else anyone could forge feed events); the persist queue's way in (the default exchange,
# amq.default) is written by the api and ingest only.
by_svc = {}
for name, svc in ours.items():
    if name in user_of:
        by_svc.setdefault(svc, set()).add(user_of[name])
def may(user, kind, resource):
    p = perms.get(user)
    try:
        return p is not None and re.search(p.get(kind) or "^$", resource) is not None
    except re.error as e:
        bad("(d) definitions: %s's %s permission %r is not a regular expression: %s" % (user, kind, p.get(kind), e))
        return False
admins = {u for u, d in users.items() if "administrator" in (d.get("tags") if isinstance(d.get("tags"), list)
                                                             else str(d.get("tags", "")).split(","))}
if perms and by_svc:
    service_users = set().union(*by_svc.values())
    for resource, kind, allowed, why in (
            ("sluice.live", "write", by_svc.get("persister", set()), "the persister publishes stored messages there"),
            ("sluice.presence", "write", by_svc.get("sse", set()), "the sse instances publish their presence snapshots there"),
            ("amq.default", "write", by_svc.get("api", set()) | by_svc.get("ingest", set()),
             "the way in to the persist queue")):
        writers = {u for u in service_users | set(perms) if may(u, kind, resource)} - admins
        if writers <= allowed:
            ok("(d) definitions: %s on %s only for %s (%s)" % (kind, resource, ", ".join(sorted(writers)) or "nobody", why))
        else:
            bad("(d) definitions: %s on %s also for %s; only %s may (%s)"
                % (kind, resource, ", ".join(sorted(writers - allowed)), ", ".join(sorted(allowed)), why))
    for svc, needs in (("persister", [("read", "sluice.persist"), ("write", "sluice.live"), ("configure", "sluice.presence")]),
                       ("api", [("write", "amq.default")]), ("ingest", [("write", "amq.default")]),
                       ("sse", [("configure", "amq.gen-x"), ("write", "amq.gen-x"), ("read", "amq.gen-x"),
                                ("read", "sluice.live"), ("write", "sluice.presence"), ("read", "sluice.presence")])):
        for u in sorted(by_svc.get(svc, set())):
            missing = ["%s %s" % (k, r) for k, r in needs if not may(u, k, r)]
            if missing:
                bad("(d) definitions: %s, the user of sluice-%s, lacks %s" % (u, svc, ", ".join(missing)))
            else:
                ok("(d) definitions: %s, the user of sluice-%s, has %s" % (u, svc, ", ".join("%s %s" % n for n in needs)))

    # Least privilege: the persister owns the topology; the others may not declare, delete, purge
    # or consume the persist queue, and none but the persister may write to the live exchange.
    for svc, forbidden in (("api", [("configure", "sluice.persist"), ("read", "sluice.persist"), ("write", "sluice.live"),
                                    ("write", "sluice.presence")]),
                           ("ingest", [("configure", "sluice.persist"), ("read", "sluice.persist"), ("write", "sluice.live"),
                                       ("write", "sluice.presence")]),
                           ("sse", [("configure", "sluice.persist"), ("configure", "sluice.live"), ("read", "sluice.persist"),
                                    ("write", "sluice.live"), ("write", "amq.default"), ("configure", "sluice.presence")])):
        for u in sorted(by_svc.get(svc, set())):
            extra = ["%s %s" % (k, r) for k, r in forbidden if may(u, k, r)]
            if extra:
                bad("(d) definitions: %s, the user of sluice-%s, may also %s" % (u, svc, ", ".join(extra)))
            else:
                ok("(d) definitions: %s, the user of sluice-%s, may not %s" % (u, svc, ", ".join("%s %s" % n for n in forbidden)))
    # ... which works only if those services declare passively (they wait for the persister's).
    for name, svc in sorted(ours.items()):
        if svc not in ("api", "ingest", "sse"):
            continue
        mode = env_of(services[name]).get("SLUICE_AMQP_DECLARE")
        if mode == "passive":
            ok("(d) %s: SLUICE_AMQP_DECLARE=passive (the persister declares the topology)" % name)
        else:
            bad("(d) %s: SLUICE_AMQP_DECLARE is %r, not passive: its user may not declare the topology" % (name, mode))

def port_text(p):
    if isinstance(p, dict):
        return "%s%s:%s" % (p.get("host_ip") + ":" if p.get("host_ip") else "", p.get("published", ""), p.get("target"))
    return str(p)

# Published ports: on every interface only the api's and the streams'; nothing of an --insecure server.
def host_ip(p):
    if isinstance(p, dict):
        return p.get("host_ip") or ""
    parts = str(p).split("/")[0].rsplit(":", 2)
    return parts[0].strip("[]") if len(parts) == 3 else ""
for name, s in sorted(services.items()):
    ps = s.get("ports") or []
    if "--insecure" in command_words(s):
        if ps:
            bad("(d) %s runs --insecure (no TLS, no passwords) and publishes %s" % (name, ", ".join(map(port_text, ps))))
        else:
            ok("(d) %s runs --insecure and publishes no port" % name)
    for p in ps:
        ip = host_ip(p)
        public = ip in ("", "0.0.0.0", "::")
        if not public:
            ok("(d) %s: %s is published on %s only" % (name, port_text(p), ip))
        elif ours.get(name) in ("api", "sse"):
            ok("(d) %s: %s is published on every interface (sluice-%s serves the public)" % (name, port_text(p), ours[name]))
        else:
            bad("(d) %s: %s is published on every interface; bind it to 127.0.0.1 (\"127.0.0.1:H:C\") or drop it"
                % (name, port_text(p)))

# CockroachDB memory: absolute sizes (a fraction is of the whole host, once per node).
size_re = re.compile(r"^\d+(\.\d+)?\s*(B|KB|KIB|MB|MIB|GB|GIB|TB|TIB)?$", re.I)
for name, s in sorted(services.items()):
    words = command_words(s)
    if not (str(s.get("image", "")).startswith("cockroachdb/cockroach") and words[:1] == ["start"]):
        continue
    flags = dict(w[2:].split("=", 1) for w in words if w.startswith("--") and "=" in w)
    for flag in ("cache", "max-sql-memory"):
        v = flags.get(flag)
        if v is None:
            bad("(d) %s: --%s is not set (the default is a fraction of the host's memory, once per node)" % (name, flag))
        elif size_re.match(v):
            ok("(d) %s: --%s=%s is an absolute size" % (name, flag, v))
        else:
            bad("(d) %s: --%s=%s is a fraction of the host's memory; give an absolute size (e.g. 256MiB)" % (name, flag, v))
    if "max-tsdb-memory" in flags and not size_re.match(flags["max-tsdb-memory"]):
        bad("(d) %s: --max-tsdb-memory=%s is not an absolute size" % (name, flags["max-tsdb-memory"]))

# Health checks: a start period, so that a slow first start is not counted against the retries.
for name, s in sorted(services.items()):
    hc = s.get("healthcheck")
    if not hc or hc.get("disable") or (hc.get("test") or [None])[0] == "NONE":
        continue
    if hc.get("start_period"):
        ok("(d) %s: healthcheck has start_period %s" % (name, hc["start_period"]))
    else:
        bad("(d) %s: healthcheck has no start_period" % name)

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
