"""The configuration: what a YAML config file may say (docs/config.md) and how it is read. Import the module you
need: `loader` (a file -> Config, every problem in one ConfigError), `schema` (Config and its sections), `rules`
(the rules across keys), and what the rest of edge shares, defined here once: `cameras` (the camera URI
language), `supervisor` (the thresholds), `precision` (the precisions and modes), `wire` (endpoints, name and
message bounds). It imports nothing of edge but the ground (edge.errors, edge.files), so every layer may use it.
"""
