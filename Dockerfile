# binance-extractor as a container image: the package and its runtime dependencies on a slim Python,
# run as an unprivileged user (uid 10001) that the Kubernetes manifests in config/kubernetes/ expect.
# Build: docker build -t binance-extractor:0.1.0 .
# Run:   docker run --rm -e DATABASE_URL=... binance-extractor:0.1.0 extract -s BTCUSDT -i 1m

FROM python:3.12-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY extractor ./extractor
COPY utils ./utils
RUN python -m pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.12-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    EXTRACTOR_STATE_DIR=/var/lib/binance-extractor
RUN groupadd --system --gid 10001 extractor \
    && useradd --system --uid 10001 --gid extractor --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin extractor \
    && install -d -o extractor -g extractor /var/lib/binance-extractor
COPY --from=build /wheels /wheels
RUN python -m pip install --no-cache-dir --no-index /wheels/*.whl && rm -rf /wheels
USER 10001:10001
WORKDIR /var/lib/binance-extractor
ENTRYPOINT ["binance-extractor"]
CMD ["--help"]
