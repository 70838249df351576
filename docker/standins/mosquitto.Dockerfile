# STAND-IN for docker.io/library/eclipse-mosquitto:2.0.20, for machines that reach no image registry
# (docker/localbuild.py standins tags it with that name; the compose stack test runs it). Not for sites.
# Same as the real image for what the stack uses: /mosquitto/{config,data,log}, the broker started as root
# with -c /mosquitto/config/mosquitto.conf dropping to user mosquitto (uid:gid 1883:1883, which make_certs.py
# gives the broker's files), mosquitto_sub for the health check.
# Differences: Debian bookworm's mosquitto 2.0.11 instead of 2.0.20 (see mosquitto.conf on what differs for
# the stack), on Debian instead of Alpine; the entrypoint does not chown /mosquitto.
ARG BASE=docker.io/library/python:3.11-slim-bookworm
FROM ${BASE}
RUN groupadd --system --gid 1883 mosquitto \
 && useradd --system --uid 1883 --gid 1883 --home-dir /var/empty --no-create-home --shell /usr/sbin/nologin mosquitto \
 && apt-get update -q \
 && apt-get install -y -q --no-install-recommends mosquitto mosquitto-clients \
 && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
 && mkdir -p /mosquitto/config /mosquitto/data /mosquitto/log \
 && chown -R 1883:1883 /mosquitto
VOLUME ["/mosquitto/data", "/mosquitto/log"]
EXPOSE 1883
CMD ["/usr/sbin/mosquitto", "-c", "/mosquitto/config/mosquitto.conf"]
