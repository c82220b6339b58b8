"""Raw logs and item texts → validated, time-ordered work-directory artefacts."""
