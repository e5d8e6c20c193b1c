"""Request tracking shared by the intake API and the jobs: bulks, their items, completion.

Imports no job: the intake (``streamer.api``) writes bulks and items, the gallery job
records each tracked item's outcome in its batch transaction (``record_outcomes``), and
the relay turns complete bulks into exactly one ``ImportCompleted`` each.
"""
