"""The client commands of the `flowsvc` command line (typer, rich)."""
