# filmless: one image for the DICOM node, the HTTP API and the compression workers.
FROM python:3.11-slim-bookworm
RUN useradd --system --create-home --home-dir /var/lib/filmless filmless
WORKDIR /opt/filmless
COPY pyproject.toml README.md ./
COPY filmless ./filmless
COPY dicom_node ./dicom_node
COPY storage ./storage
COPY viewer_api ./viewer_api
COPY worklist ./worklist
RUN pip install --no-cache-dir .
USER filmless
ENV FILMLESS_DATA=/var/lib/filmless/data
EXPOSE 11112 8080
VOLUME ["/var/lib/filmless/data"]
HEALTHCHECK --interval=30s --timeout=5s CMD python -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:8080/healthz').status == 200 else 1)"
ENTRYPOINT ["filmless"]
CMD ["serve"]
