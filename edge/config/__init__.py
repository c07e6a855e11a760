"""The configuration: what a YAML config file may say and how it is read. Import the part you need:

    edge.config.loader      load_config, parse_config: a file -> Config, every problem in one ConfigError
    edge.config.schema      Config and its sections (pydantic models)
    edge.config.rules       the rules across keys (unique names, defined cameras, one model per task)
    edge.config.cameras     the camera URI language (file://, test://, v4l2://, rtsp://, csi://)
    edge.config.supervisor  the supervisor's thresholds (SupervisorConfig, which the policy takes) and section
    edge.config.precision   the precisions, the order a task prefers them in, the modes of a task
    edge.config.wire        what it shares with the wire: endpoints and their defaults, name and message bounds

It imports nothing of edge but the ground (edge.errors, edge.files), so every layer may use it.
"""
