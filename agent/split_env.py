"""Names shared by `cpagent run` (the supervisor) and the sides it starts, without importing either."""

CHECKED_ENV = "CPAGENT_CONFIG_CHECKED"  # the configuration path the supervisor has run the pre-flight checks on
HEALTH_FD_ENV = "CPAGENT_HEALTH_FD"  # the pipe a side reports READY/WATCHDOG/STATUS on
