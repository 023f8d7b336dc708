"""The tests' shared fixtures live in pytest plugins (tests/plugins/), registered here:
the session's Kafka broker, per-test settings on it, a throwaway redis-server, the trainer's
small prepared data set. Helpers the tests import: tests.plugins.chaos (the drills' environment
and verdict), tests.plugins.paths (AUDIO_DIR, SHARED_LASTFM), tests.plugins.redis.redis_command,
tests.plugins.kafka.free_port and free_port_block."""

pytest_plugins = [
    "tests.plugins.kafka",
    "tests.plugins.settings",
    "tests.plugins.redis",
    "tests.plugins.trainer",
]
