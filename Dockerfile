# One image with every sluice service; docker-compose.yaml runs each with its own command.
FROM debian:bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends \
      build-essential cmake pkg-config libh2o-evloop-dev librabbitmq-dev libpq-dev \
      libcurl4-openssl-dev libjansson-dev check libwslay-dev libssl-dev zlib1g-dev libjose-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY CMakeLists.txt ./
COPY internal internal
COPY cmd cmd
COPY tests tests
COPY bench bench
COPY web web
COPY clients/js clients/js
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build /build -j"$(nproc)" \
    && mkdir -p /out && cp /build/bin/sluice-* /out/

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libh2o-evloop0.13 librabbitmq4 libpq5 libcurl4 libjansson4 libwslay1 libssl3 libjose0 curl ca-certificates \
    && rm -rf /var/lib/apt/lists/* && useradd --system --no-create-home sluice
COPY --from=build /out/ /usr/local/bin/
USER sluice
# Containers listen on every interface; the services default to loopback for native runs.
ENV SLUICE_API_HOST=0.0.0.0 SLUICE_SSE_HOST=0.0.0.0 SLUICE_PERSISTER_HOST=0.0.0.0 SLUICE_INGEST_HOST=0.0.0.0
CMD ["sluice-api"]
