"""Built-in configs: `--config NAME` finds NAME.toml here when no file of that name exists."""
