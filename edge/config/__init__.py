"""The configuration: what a YAML config file may say and how it is read. Import the part you need:

    edge.config.loader      load_config, parse_config: a file -> Config, every problem in one ConfigError
    edge.config.schema      Config and its sections (pydantic models)
    edge.config.rules       the rules across keys (unique names, defined cameras, one model per task)
    edge.config.cameras     the camera URI language (file://, test://, v4l2://, rtsp://, csi://)
    edge.config.precision   the precisions and the modes of a task
    edge.config.wire        what it shares with the wire: endpoints and their defaults, name and message bounds
"""
