# recstream worker/producer image. CPU-only torch first, so pip never pulls the CUDA build.
FROM python:3.11-slim
WORKDIR /app
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY producers ./producers
COPY online_models ./online_models
COPY streams ./streams
RUN pip install --no-cache-dir .
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["recstream"]
