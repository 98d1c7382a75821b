"""The language: grammar loading and parsing, the formatter, the typed IR, composition (`use`) and checks."""
