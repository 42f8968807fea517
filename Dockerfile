# filmless: one image for the DICOM node, the HTTP API and the compression workers
# (docker-compose.yml runs it as filmless-dicom and filmless-api, with FILMLESS_COMPONENTS).
# Every setting is an environment variable FILMLESS_... (see .env.example).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# All dependencies come as wheels (psycopg[binary] brings its own libpq): no compiler needed.
WORKDIR /opt/filmless
COPY pyproject.toml README.md ./
COPY filmless ./filmless
COPY dicom_node ./dicom_node
COPY storage ./storage
COPY viewer_api ./viewer_api
COPY worklist ./worklist
RUN pip install . && rm -rf /opt/filmless/build

# A fixed uid/gid, so that volumes and bind mounts can be given to it; /data belongs to it
# before VOLUME, so a new named volume starts with that owner.
RUN groupadd --system --gid 10001 filmless \
    && useradd --system --uid 10001 --gid filmless --home-dir /var/lib/filmless --create-home \
       --shell /usr/sbin/nologin filmless \
    && install -d -o filmless -g filmless -m 0750 /data
USER filmless
WORKDIR /var/lib/filmless
ENV FILMLESS_DATA=/data
VOLUME ["/data"]
EXPOSE 11112 8080

# The image's default (FILMLESS_COMPONENTS=all) serves the API; docker-compose.yml gives each
# service its own check (filmless echo for the DICOM node).
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('FILMLESS_HTTP_PORT', '8080'), timeout=5).status != 200)"]
ENTRYPOINT ["filmless"]
CMD ["serve"]
