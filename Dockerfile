# The broker as a sidecar: it serves on a socket in a shared volume; other containers of the
# pod or job mount the same volume and set EPHEMERAL_PIPE=/run/ephemeral-broker/broker.sock.
#
# It builds without network, from a wheelhouse in the build context (the project's wheel and
# the pinned versions of its dependencies, written to dist/wheels/ by `make wheelhouse`):
#     make wheelhouse && docker build --network none -t ephemeral-broker .
# Any Debian-based base with python3 and python3-venv will do: --build-arg BASE_IMAGE=...
# The default is python:3.11-slim pinned by digest; docs/deployment.md ("Sidecar container") says
# where the digest comes from.
ARG BASE_IMAGE=python:3.11-slim@sha256:8f64a67710f3d981cf3008d6f9f1dbe61accd7927f165f4e37ea3f8b883ccc3f

# Stage 1: a venv with the broker, from the wheelhouse only (--no-index). The final stage
# copies the venv alone: the wheels, and pip itself, stay behind.
FROM ${BASE_IMAGE} AS venv
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY constraints.txt /tmp/constraints.txt
COPY dist/wheels /tmp/wheels
RUN python3 -m venv /opt/ephemeral-broker \
    && /opt/ephemeral-broker/bin/python -m pip install --no-index --find-links /tmp/wheels \
        --constraint /tmp/constraints.txt ephemeral-broker \
    && /opt/ephemeral-broker/bin/python -m pip check \
    && /opt/ephemeral-broker/bin/python -m pip uninstall --yes pip setuptools

# Stage 2: the base, the venv (same base, so its python symlink points at the same
# interpreter), the health check, a numeric non-root user and the socket directory.
FROM ${BASE_IMAGE}
COPY --from=venv /opt/ephemeral-broker /opt/ephemeral-broker
COPY image/healthcheck.py /opt/ephemeral-broker/healthcheck.py

# uid/gid 10001 by number too: Kubernetes' runAsNonRoot can only verify a numeric user, and
# other containers share the socket (mode 0660) by running as this uid or in this group.
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin broker \
    && mkdir -p /run/ephemeral-broker \
    && chown 10001:10001 /run/ephemeral-broker \
    && chmod 0770 /run/ephemeral-broker

USER 10001:10001
VOLUME ["/run/ephemeral-broker"]

ENV PATH=/opt/ephemeral-broker/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    BROKER_SOCKET=/run/ephemeral-broker/broker.sock \
    BROKER_SOCKET_MODE=0660 \
    BROKER_LOG_FORMAT=json \
    EPHEMERAL_PIPE=/run/ephemeral-broker/broker.sock

# /readyz over the socket: healthy while the broker serves, unhealthy from the moment it
# drains. A failed check prints one line (see image/healthcheck.py).
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-I", "/opt/ephemeral-broker/healthcheck.py"]

# SIGTERM (docker stop, a pod's end) drains the broker; it removes its socket and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["ephemeral-broker"]
CMD ["serve"]
