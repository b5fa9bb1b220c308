"""postwarden.toml and policy files: models and the one loader the daemon, CLI and TUI share."""

from postwarden.config.loader import (
    Config,
    ConfigError,
    Problem,
    config_path,
    load_config,
)

__all__ = ["Config", "ConfigError", "Problem", "config_path", "load_config"]
