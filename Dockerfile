# The worker image the k8s manifests run: framegraph on PATH, scripts/ and triton_models/ in /app.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends libgl1 libglib2.0-0 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine engine
COPY operators operators
COPY graphs graphs
COPY scripts scripts
COPY triton_models triton_models
RUN pip install --no-cache-dir . && useradd --uid 10001 --create-home framegraph
USER 10001
ENTRYPOINT []
CMD ["framegraph", "worker", "/etc/framegraph/graph.yaml", "--api-address", "0.0.0.0"]
