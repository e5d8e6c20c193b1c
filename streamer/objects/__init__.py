"""The objects job: bucket notifications in, the object index kept current, and the galleries
that use a changed object handed to the gallery job for a re-check."""
