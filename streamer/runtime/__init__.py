"""The consumer runtime every job runs on; it imports no job.

A job is a ``Handler`` (``streamer.runtime.handler``); ``Runner`` runs it as one member
of its consumer group with the guarantees written in ``checkpoint`` (the commit
order), ``ownership`` (fenced offsets), ``retry`` and ``circuit`` (outages) and
``deadletters`` (bad input).
"""
