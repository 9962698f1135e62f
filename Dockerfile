# The broker as a sidecar: it serves on a socket in a shared volume; other containers of the
# pod/job mount the same volume and set EPHEMERAL_PIPE=/run/ephemeral-broker/broker.sock.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY client ./client
RUN pip install . && rm -rf /src

# A fixed uid/gid so that other containers can share the socket through the group (0660).
RUN groupadd --system --gid 10001 broker \
    && useradd --system --uid 10001 --gid broker --no-create-home --shell /usr/sbin/nologin broker \
    && mkdir -p /run/ephemeral-broker \
    && chown broker:broker /run/ephemeral-broker \
    && chmod 0770 /run/ephemeral-broker

USER broker:broker
VOLUME ["/run/ephemeral-broker"]

ENV BROKER_SOCKET=/run/ephemeral-broker/broker.sock \
    BROKER_SOCKET_MODE=0660 \
    BROKER_LOG_FORMAT=json \
    EPHEMERAL_PIPE=/run/ephemeral-broker/broker.sock

# The broker answers its own health check over the socket: /readyz turns 503 while draining.
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
    CMD ["python", "-c", "import os,sys,httpx; t=httpx.HTTPTransport(uds=os.environ['EPHEMERAL_PIPE']); sys.exit(0 if httpx.Client(transport=t,timeout=2).get('http://localhost/readyz').status_code==200 else 1)"]

STOPSIGNAL SIGTERM
ENTRYPOINT ["ephemeral-broker"]
CMD ["serve"]
