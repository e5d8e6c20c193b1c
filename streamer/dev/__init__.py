"""Development tools, not the product's runtime: the embedded stack, demo, benchmark and loadgen.

They need the ``dev-stack`` extra (a Kafka-protocol broker, moto, pgserver).
"""
