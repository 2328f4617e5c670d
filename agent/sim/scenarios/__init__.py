"""Built-in scenario timelines (TOML), shipped with the package."""
