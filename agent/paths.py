"""Default paths that the command line needs before anything else is imported (the supervisor of
`cpagent run` reads the configuration path without importing the configuration parser)."""

from pathlib import Path

DEFAULT_CONFIG_PATH = Path("/etc/cpagent/agent.toml")
