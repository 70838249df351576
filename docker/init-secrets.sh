#!/bin/sh
# Create the compose stack's secrets (random, 32 characters) in docker/secrets/ unless they exist.
# Files are 0644 inside a 0700 folder: only root on the host can reach them, and the containers' non-root
# users (gateway uid 10001, mosquitto 1883) can read their bind-mounted copy.
set -eu
cd "$(dirname "$0")/secrets"
chmod 700 .
for name in db_password mqtt_password console_admin_password; do
  if [ ! -s "$name" ]; then
    (umask 022; head -c 48 /dev/urandom | base64 | tr -dc 'A-Za-z0-9' | head -c 32 > "$name")
    echo "created secrets/$name"
  else
    echo "kept secrets/$name"
  fi
done
