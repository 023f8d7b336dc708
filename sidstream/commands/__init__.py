"""The CLI's subcommand groups (the app layer: may import every package)."""
