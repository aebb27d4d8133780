# The service image used by docker-compose.yml: every process is a subcommand of one CLI.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY eshram_locator ./eshram_locator
COPY consumers ./consumers
COPY streams ./streams
COPY avro ./avro
# gcc builds the locator's compiled collections reader (an optional C extension: without a
# compiler the install goes on and the locator reads every record through fastavro).
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && pip install --no-cache-dir . \
    && apt-get purge -y gcc libc6-dev && apt-get autoremove -y && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 locator
USER locator
ENV LOCATOR_AVRO_DIR=/app/avro
ENTRYPOINT ["eshram-locator"]
CMD ["--help"]
