"""``streamer serve``: the HTTP face of streamer.

The bulk intake API (``/v1/galleries/bulk``, ``/v1/events``), request tracking
(``/v1/bulks``), the operator console (``/ui/``), health and metrics, on one port.
Like the CLI it is a face over the runtime, the contract, tracking and operations;
a job's read models (the stored gallery) are handed in by the CLI, never imported.
"""
