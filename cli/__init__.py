"""The dyembed command-line interface (installed as `dyembed_cli`)."""
