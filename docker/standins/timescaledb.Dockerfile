# STAND-IN for docker.io/timescale/timescaledb:2.19.3-pg15, for machines that reach no image registry
# (docker/localbuild.py standins tags it with that name; the compose stack test runs it). Not for sites.
# Same as the real image for what the stack uses: POSTGRES_USER / POSTGRES_DB / POSTGRES_PASSWORD(_FILE),
# initdb on an empty /var/lib/postgresql/data (scram-sha-256 over the network), the timescaledb extension
# preloaded and created in POSTGRES_DB, pg_isready, postgres as PID 1 (SIGTERM: fast shutdown).
# Differences: Debian bookworm's PostgreSQL 15 instead of Alpine's; TimescaleDB is the Apache-2 edition the
# host built from Debian's source package (scripts/setup.sh), copied in by localbuild.py; postgres runs as
# Debian's uid, not 70; no /docker-entrypoint-initdb.d scripts, no timescaledb-tune, no TimescaleDB toolkit.
ARG BASE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE}
# postgresql-common would create and start a "main" cluster at install: the entrypoint makes the only one.
RUN mkdir -p /etc/postgresql-common/createcluster.d \
 && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/no-main.conf \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends postgresql-15 \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb
COPY lib/ /usr/lib/postgresql/15/lib/
COPY extension/ /usr/share/postgresql/15/extension/
COPY timescaledb-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
ENV PATH=/usr/lib/postgresql/15/bin:${PATH} PGDATA=/var/lib/postgresql/data
VOLUME ["/var/lib/postgresql/data"]
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["postgres"]
