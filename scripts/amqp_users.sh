# shellcheck shell=bash
# Sourced by scripts/servers.sh and scripts/cluster.sh: one RabbitMQ user per service, with the
# least permissions its code needs (README, "Access control"; docs/architecture.md, "Nothing
# published without credentials"). The persister owns the topology and declares it; api, ingest
# and sse run with SLUICE_AMQP_DECLARE=passive and declare only what they use, passively, which
# needs no configure right. Permissions (vhost /):
#
#   user              configure                                           write                                read
#   sluice-api        ^$                                                  ^amq\.default$                       ^$
#   sluice-ingest     ^$                                                  ^amq\.default$                       ^$
#   sluice-persister  ^sluice\.(dlx|persist|persist\.dead|live|presence)$  ^sluice\.(dlx|persist\.dead|live)$   ^sluice\.(dlx|persist)$
#   sluice-sse        ^amq\.gen-.*$                                       ^(sluice\.presence|amq\.gen-.*)$     ^(sluice\.(live|presence)|amq\.gen-.*)$
#
# Only the persister may publish to sluice.live; api and ingest may publish through the default
# exchange only; sse may publish to sluice.presence (the instances' presence snapshots; the
# persister declares it) and to nothing else it does not own. The names are the defaults
# (SLUICE_QUEUE, SLUICE_LIVE_EXCHANGE, SLUICE_PRESENCE_EXCHANGE unset).
#
# The passwords are random, made once per state dir and kept in AMQP_USERS_FILE (mode 0600); the
# users are (re)written from it by every `start` (rabbitmqctl import_definitions, which adds or
# updates and never removes, so guest stays for tests and tools).

AMQP_USERS=(api ingest persister sse)

# amqp_user_perms SERVICE: "configure write read" (JSON-escaped regexes)
amqp_user_perms() {
  case $1 in
    api | ingest) printf '%s\n' '^$ ^amq\\.default$ ^$' ;;
    persister) printf '%s\n' '^sluice\\.(dlx|persist|persist\\.dead|live|presence)$ ^sluice\\.(dlx|persist\\.dead|live)$ ^sluice\\.(dlx|persist)$' ;;
    sse) printf '%s\n' '^amq\\.gen-.*$ ^(sluice\\.presence|amq\\.gen-.*)$ ^(sluice\\.(live|presence)|amq\\.gen-.*)$' ;;
    *) return 1 ;;
  esac
}

# amqp_users_file DIR: where the passwords of the users of the servers in DIR are kept.
amqp_users_file() { echo "$1/amqp-users.env"; }

# amqp_users_ensure_file FILE: makes FILE (SERVICE=password lines, mode 0600) unless it exists.
amqp_users_ensure_file() {
  local file=$1 svc tmp
  [[ -s $file ]] && return 0
  tmp=$file.tmp.$$
  (
    umask 077
    for svc in "${AMQP_USERS[@]}"; do
      printf '%s=%s\n' "$svc" "$(od -An -N18 -tx1 /dev/urandom | tr -d ' \n')"
    done >"$tmp"
  )
  mv "$tmp" "$file"
}

# amqp_user_password FILE SERVICE: the password, or nothing when FILE has none.
amqp_user_password() {
  [[ -r $1 ]] || return 0
  sed -n "s/^$2=//p" "$1"
}

# amqp_users_definitions FILE: the definitions document of the users and their permissions.
amqp_users_definitions() {
  local file=$1 svc sep='' perms
  printf '{"users":['
  for svc in "${AMQP_USERS[@]}"; do
    printf '%s{"name":"sluice-%s","password":"%s","tags":[]}' "$sep" "$svc" "$(amqp_user_password "$file" "$svc")"
    sep=,
  done
  printf '],"permissions":['
  sep=''
  for svc in "${AMQP_USERS[@]}"; do
    read -r -a perms <<<"$(amqp_user_perms "$svc")"
    printf '%s{"user":"sluice-%s","vhost":"/","configure":"%s","write":"%s","read":"%s"}' \
      "$sep" "$svc" "${perms[0]}" "${perms[1]}" "${perms[2]}"
    sep=,
  done
  printf ']}\n'
}

# amqp_users_apply FILE CTL...: makes FILE if needed and imports the users through CTL (a
# rabbitmqctl command line aimed at a running node; the document goes in on stdin, so the
# passwords never appear in a process list or another file).
amqp_users_apply() {
  local file=$1
  shift
  amqp_users_ensure_file "$file"
  amqp_users_definitions "$file" | "$@" --timeout 60 -q import_definitions
}

# amqp_users_urls FILE SERVICE HOST:PORT...: the service's AMQP URL list (comma-separated), empty
# when FILE has no password for it.
amqp_users_urls() {
  local file=$1 svc=$2 pw hp sep='' out=''
  shift 2
  pw=$(amqp_user_password "$file" "$svc")
  [[ -n $pw ]] || return 0
  for hp; do
    out+="${sep}amqp://sluice-$svc:$pw@$hp/"
    sep=,
  done
  echo "$out"
}

# amqp_users_env FILE HOST:PORT...: export lines SLUICE_AMQP_URL_<SERVICE> for `env`.
amqp_users_env() {
  local file=$1 svc url
  shift
  for svc in "${AMQP_USERS[@]}"; do
    url=$(amqp_users_urls "$file" "$svc" "$@")
    [[ -n $url ]] && echo "export SLUICE_AMQP_URL_${svc^^}=$url"
  done
  return 0
}
