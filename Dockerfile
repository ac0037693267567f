# Airflow image for attachment-ops: the official image plus the pinned requirements.
# docker-compose.yaml mounts the DAGs, the plugins and the package instead of copying them in, so a
# code change needs no rebuild. A change to requirements.txt does.
FROM apache/airflow:3.3.2

COPY requirements.txt /tmp/attachment-ops-requirements.txt
# requirements.txt pins apache-airflow==3.3.2 itself, so pip cannot replace the image's Airflow.
RUN pip install --no-cache-dir -r /tmp/attachment-ops-requirements.txt
