"""Offload of inline attachment bytes to S3: plan, batch worker, restore and run summary."""
