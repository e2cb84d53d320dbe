#!/usr/bin/env bash
# Entry point of the RabbitMQ nodes in docker-compose.yaml: writes the definitions file with the
# passwords compose passes in (MQ_PASSWORD_*), installs sluice's configuration and starts the
# image's own entry point. The template (definitions.json here) holds @MQ_PASSWORD_<USER>@ where a
# password goes; a placeholder left unfilled, or an empty password, stops the node.
set -euo pipefail

src=/etc/sluice
defs=$(<"$src/definitions.json")
for var in $(grep -o '@MQ_PASSWORD_[A-Z0-9_]*@' "$src/definitions.json" | tr -d @ | sort -u); do
  val=${!var:-}
  if [[ -z $val ]]; then
    echo "sluice: $var is empty; the definitions need a password for it" >&2
    exit 1
  fi
  val=${val//\\/\\\\}  # JSON string escapes
  val=${val//\"/\\\"}
  defs=${defs//"@$var@"/"$val"}
done

umask 077
printf '%s\n' "$defs" >/etc/rabbitmq/definitions.json
install -m 0644 "$src/rabbitmq.conf" /etc/rabbitmq/conf.d/90-sluice.conf
chown rabbitmq:rabbitmq /etc/rabbitmq/definitions.json /etc/rabbitmq/conf.d/90-sluice.conf
exec docker-entrypoint.sh rabbitmq-server
