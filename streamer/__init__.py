"""streamer keeps product image galleries in sync at catalog scale, on Kafka."""

__version__ = "0.1.0"
__all__ = ["__version__"]
