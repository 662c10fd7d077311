"""The `telltale` command: `main` builds the parser from the command modules, `common` holds
what they share; no command module imports `main`."""
