# The service image used by docker-compose.yml: every process is a subcommand of one CLI.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml README.md ./
COPY eshram_locator ./eshram_locator
COPY consumers ./consumers
COPY streams ./streams
COPY avro ./avro
RUN pip install --no-cache-dir . \
    && useradd --system --uid 10001 locator
USER locator
ENV LOCATOR_AVRO_DIR=/app/avro
ENTRYPOINT ["eshram-locator"]
CMD ["--help"]
