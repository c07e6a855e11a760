"""Config: the demo config, every kind of bad input, env overrides, path resolution."""
from __future__ import annotations

from pathlib import Path

import pytest

from edge.config.loader import load_config, parse_config
from edge.config.schema import Config
from edge.errors import ConfigError

GOOD = """
version: 1
cameras:
  - id: front
    uri: file://videos/front.avi?realtime=0
  - id: rear
    uri: rtsp://user:secret@127.0.0.1:8554/rear
tasks:
  - name: people
    type: detector
    model: models/yolo.onnx
    cameras: [front]
  - name: cars
    type: detector
    variants: {fp32: m.onnx, int8: m.int8.onnx}
    precision: int8
    cameras: [front]
    enabled: false
"""


def parse(text: str, env: dict[str, str] | None = None, base: Path = Path("/cfg")) -> Config:
    return parse_config(text, source="test.yaml", base_dir=base, environ=env or {})


def error(text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        parse(text, env)
    return str(info.value)


def test_good_config_resolves_paths_and_defaults() -> None:
    config = parse(GOOD)
    assert config.camera("front").uri == "file:///cfg/videos/front.avi?realtime=0"
    assert config.camera("front").parsed.lossless
    assert config.tasks[0].model_files == {"fp32": "/cfg/models/yolo.onnx"}
    assert (config.tasks[0].precision, config.tasks[1].precision) == ("auto", "int8")
    assert config.tasks[0].preload == "all"
    assert config.tasks[0].in_flight == 2 and config.output.heartbeat_hz == 1.0
    assert config.output.results.startswith("ipc://") and config.output.results.endswith("/edge/results.sock")


def test_only_cameras_of_enabled_tasks_are_used() -> None:
    assert parse(GOOD).used_camera_ids() == ["front"]


def test_packaged_demo_config_is_valid(tmp_path: Path) -> None:
    from edge.cli.demo import demo_config

    config = demo_config(tmp_path, endpoint=f"ipc://{tmp_path}/r.sock", control=f"ipc://{tmp_path}/c.sock")
    assert (config.output.results, config.control.endpoint) == (f"ipc://{tmp_path}/r.sock", f"ipc://{tmp_path}/c.sock")
    assert config.tasks[0].engines == f"{tmp_path}/engines/yolov3-tiny" and config.tasks[0].precision == "auto"
    assert config.cameras[0].parsed.location == f"{tmp_path}/media/vtest.avi"


def test_malformed_yaml_names_line_and_column() -> None:
    message = error("version: 1\ncameras: [\n")
    assert "not valid YAML at line" in message and "Hint:" in message


@pytest.mark.parametrize("text", ["", "- a\n- b\n", "just a string"])
def test_top_level_must_be_a_mapping(text: str) -> None:
    assert "must be a YAML mapping" in error(text)


def test_unknown_key_lists_allowed_keys() -> None:
    message = error(GOOD.replace("    cameras: [front]\n  - name: cars", "    camras: [front]\n  - name: cars"))
    assert "tasks[0].camras" in message
    assert "allowed keys here: name, type, model" in message


def test_missing_required_key() -> None:
    message = error(GOOD.replace("    type: detector\n    model: models", "    model: models"))
    assert "tasks[0].type: Field required" in message and "Hint: add this key" in message


def test_wrong_type_names_path_value_and_rule() -> None:
    message = error(GOOD.replace("precision: int8", "precision: int8\n    in_flight: many"))
    assert "tasks[1].in_flight" in message and "'many'" in message and "whole number" in message


def test_uri_without_scheme() -> None:
    message = error(GOOD.replace("file://videos/front.avi?realtime=0", "/dev/video0"))
    assert "cameras[0].uri" in message and "has no scheme" in message and "v4l2:///dev/video0" in message


def test_unknown_scheme_and_parameter() -> None:
    assert "unknown camera URI scheme 'http'" in error(GOOD.replace("file://videos", "http://videos"))
    assert "unknown parameter 'speed'" in error(GOOD.replace("realtime=0", "speed=2"))
    assert "must be 0 or 1" in error(GOOD.replace("realtime=0", "realtime=maybe"))


def test_undefined_camera_reference() -> None:
    message = error(GOOD.replace("cameras: [front]\n  - name: cars", "cameras: [side]\n  - name: cars"))
    assert "undefined camera(s) ['side']" in message


def test_duplicate_ids_and_model_xor_variants() -> None:
    assert "defined more than once" in error(GOOD.replace("id: rear", "id: front"))
    assert "exactly one of `model`" in error(GOOD.replace("    model: models/yolo.onnx\n", ""))
    assert "exactly one of `model`" in error(GOOD.replace("    model: models/yolo.onnx\n",
                                                          "    model: models/yolo.onnx\n    engines: repo\n"))
    assert "precision 'fp16' has no file" in error(GOOD.replace("precision: int8", "precision: fp16"))


def test_bad_names_and_ranges() -> None:
    assert "tasks[0].name" in error(GOOD.replace("name: people", "name: 'people.v2'"))
    assert "tasks[0].params.conf_threshold" in error(
        GOOD.replace("    cameras: [front]\n  - name: cars",
                     "    cameras: [front]\n    params: {conf_threshold: 2}\n  - name: cars"))


def test_endpoint_rules() -> None:
    assert "without CURVE would reach anyone on the network" in error(GOOD + "output: {results: 'tcp://10.1.2.3:5555'}\n")
    assert "without CURVE would reach any process on this machine" in error(
        GOOD + "output: {results: 'tcp://127.0.0.1:5555'}\n")                  # tests/wire/test_curve.py: with CURVE
    assert "must be tcp://HOST:PORT" in error(GOOD + "output: {results: 'tcp://nohost'}\n")
    assert "absolute path" in error(GOOD + "output: {results: 'ipc://relative.sock'}\n")


def test_env_overrides_and_their_errors() -> None:
    config = parse(GOOD, {"EDGE_RESULTS_ENDPOINT": "ipc:///run/other/results.sock", "EDGE_LOG_LEVEL": "debug"})
    assert config.output.results == "ipc:///run/other/results.sock" and config.logging.level == "debug"
    message = error(GOOD, {"EDGE_LOG_LEVEL": "loud"})
    assert "logging.level (from $EDGE_LOG_LEVEL)" in message and "'loud'" in message


def test_variable_expansion() -> None:
    config = parse(GOOD.replace("models/yolo.onnx", "${MODELS}/yolo.onnx"), {"MODELS": "/opt/m"})
    assert config.tasks[0].model == "/opt/m/yolo.onnx"
    message = error(GOOD.replace("models/yolo.onnx", "${MODELS}/yolo.onnx"))
    assert "tasks[0].model: uses ${MODELS}, which is not set (value: '${MODELS}/yolo.onnx')" in message


def test_unset_variables_are_reported_with_every_other_problem() -> None:
    text = GOOD.replace("models/yolo.onnx", "${MODELS}/yolo.onnx").replace("id: rear", "id: rear\n    extra: 1")
    text = text.replace("    enabled: false", "    enabled: ${ENABLED}")
    assert text.count("${") == 2 and text.count("extra: 1") == 1
    message = error(text)
    assert "3 problem(s)" in message
    assert "tasks[0].model: uses ${MODELS}, which is not set" in message
    assert "uses ${ENABLED}, which is not set" in message and "extra" in message
    assert "valid boolean" not in message                  # the unexpanded text is not judged as a value


def test_every_problem_is_reported_at_once() -> None:
    text = GOOD
    for old, new in [("id: rear", "id: rear\n    extra: 1"), ("    enabled: false", "    enabled: maybe"),
                     ("type: detector\n    variants", "type: tracker\n    variants")]:
        assert text.count(old) == 1, old                      # each edit really makes one problem
        text = text.replace(old, new)
    message = error(text)
    assert "3 problem(s)" in message
    assert "cameras[1].extra: Extra inputs are not permitted" in message
    assert "tasks[1].type: Input should be 'detector' (value: 'tracker')" in message
    assert "tasks[1].enabled: Input should be a valid boolean" in message


def test_load_config_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path / "nope.yaml")


def test_load_config_resolves_relative_to_file(tmp_path: Path) -> None:
    (tmp_path / "edge.yaml").write_text(GOOD)
    assert load_config(tmp_path / "edge.yaml", environ={}).tasks[0].model == f"{tmp_path}/models/yolo.onnx"


def test_rules_across_keys_are_reported_with_every_other_problem(tmp_path: Path) -> None:
    (tmp_path / "edge.yaml").write_text("""
version: 1
cameras:
  - id: front
    uri: test://bars
    colour: red
  - id: front
    uri: test://bars
tasks:
  - name: people
    type: detector
    model: m.onnx
    variants: {fp32: m.onnx}
    cameras: [front, side, front]
  - name: people
    type: detector
    variants: {fp32: m.onnx}
    precision: int8
    priority: high
    cameras: [rear]
""")
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "edge.yaml", environ={})
    message = str(info.value)
    expected = [
        "cameras[0].colour: Extra inputs are not permitted (value: 'red'). Hint: remove it",
        "cameras[1].id: camera id 'front' is defined more than once (also at cameras[0].id) (value: 'front')."
        " Hint: give every camera its own id",
        "tasks[0].cameras: lists camera(s) ['front'] more than once (value: ['front', 'side', 'front'])."
        " Hint: list each camera once",
        "tasks[0].cameras: task 'people' uses undefined camera(s) ['side']; defined: ['front']"
        " (value: ['front', 'side', 'front']). Hint: define the camera under `cameras:`",
        "tasks[0]: give exactly one of `model`", "given: `model`, `variants`. Hint: keep one of the three keys",
        "tasks[1].priority: Input should be a valid integer", "(value: 'high'). Hint: write a whole number",
        "tasks[1].name: task name 'people' is defined more than once (also at tasks[0].name) (value: 'people')."
        " Hint: give every task its own name",
        "tasks[1].cameras: task 'people' uses undefined camera(s) ['rear']; defined: ['front'] (value: ['rear'])."
        " Hint: define the camera",
        "tasks[1].precision: precision 'int8' has no file; variants are ['fp32'] (value: 'int8'). Hint: add that",
    ]
    assert f"invalid config {tmp_path}/edge.yaml: 9 problem(s)" in message
    for text in expected:
        assert text in message, text
    lines = message.splitlines()
    assert lines.index(next(x for x in lines if "cameras[1].id" in x)) < lines.index(
        next(x for x in lines if "tasks[0].cameras" in x))                              # in file order


def test_rules_across_keys_still_apply_to_objects_built_in_code() -> None:
    from pydantic import ValidationError

    from edge.config.schema import CameraConfig, TaskConfig

    with pytest.raises(ValidationError, match="exactly one of `model`"):
        TaskConfig(name="t", type="detector", cameras=["c"])
    task = TaskConfig(name="t", type="detector", model="m.onnx", cameras=["c"])
    with pytest.raises(ValidationError, match=r"tasks\[0\].cameras: task 't' uses undefined camera\(s\) \['c'\]"):
        Config(version=1, cameras=[CameraConfig(id="a", uri="test://bars")], tasks=[task])


def test_undefined_cameras_are_not_guessed_when_the_cameras_section_is_broken() -> None:
    message = error(GOOD.replace("cameras:\n  - id: front", "cameras: front\nunused:\n  - id: front"))
    assert "cameras: Input should be a valid list" in message and "undefined camera" not in message


def test_rate_limit_must_be_off_or_a_usable_rate() -> None:
    for bad, rule in (("1e-300", "must be 0 (off) or at least 0.000278 Hz"), ("-1", "greater than or equal to 0"),
                      ("1e9", "less than or equal to 1000")):
        message = error(GOOD.replace("    enabled: false", f"    enabled: false\n    rate_limit_hz: {bad}"))
        assert "rate_limit_hz" in message and rule in message, message
    slow = GOOD.replace("    enabled: false", "    enabled: false\n    rate_limit_hz: 0.0003")
    assert parse(slow).tasks[1].rate_limit_hz == 0.0003


# ---------------------------------------------------------------- hostile and broken files (issue 7)

def bomb(levels: int = 9) -> str:
    """A "billion laughs" file: 9 levels of 9 aliases, a few hundred bytes that copy out to 9^9 values."""
    names = "abcdefghi"[:levels]
    lines = [f"a: &a [{', '.join('x' * 9)}]"]
    lines += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]" for p, n in zip(names, names[1:])]
    return "\n".join(lines) + "\n"


@pytest.mark.timeout(10)
def test_alias_bomb_is_refused() -> None:
    text = bomb()
    assert len(text) < 400 and text.count("*") == 72
    message = error(text)
    assert "expands to more than 100000 values" in message and "line 6 (f)" in message
    assert "72 alias(es)" in message and "Hint: write repeated blocks out" in message


@pytest.mark.timeout(10)
def test_alias_inside_its_own_anchor_and_deep_nesting_are_refused() -> None:
    assert "cameras[0] is an alias (*name) inside the block that its anchor (&name) marks at line 1" in error(
        "cameras: &a [*a]\n")
    assert "nests deeper than 32 levels at line 1" in error("x: " + "[" * 5000 + "]" * 5000 + "\n")
    deep = "a: &a " + "[" * 25 + "]" * 25 + "\nb: &b " + "[" * 10 + "*a" + "]" * 10 + "\n"
    assert "nests deeper than 32 levels at line 2 (b" in error(deep)      # each alone is shallow enough


def test_anchors_aliases_and_merge_keys_still_load() -> None:
    text = """
version: 1
cameras:
  - &front {id: front, uri: test://bars}
  - <<: *front
    id: rear
tasks:
  - &people
    name: people
    type: detector
    model: m.onnx
    cameras: &both [front, rear]
    params: &strict {conf_threshold: 0.6, nms_iou: 0.5}
  - <<: *people
    name: cars
    cameras: *both
    params: *strict
"""
    config = parse(text)
    assert [c.id for c in config.cameras] == ["front", "rear"] and config.camera("rear").uri == "test://bars"
    assert config.tasks[1].name == "cars" and config.tasks[1].model == "/cfg/m.onnx"
    assert config.tasks[1].cameras == ["front", "rear"] and config.tasks[1].params.conf_threshold == 0.6
    two = text.replace("  - <<: *front\n", "  - <<: [*front, {uri: 'test://bars?size=64x48'}]\n")
    assert parse(two).camera("rear").uri.startswith("test://bars")           # a list of merges loads
    message = error(text.replace("  - <<: *front\n", "  - <<: *front\n    <<: {uri: 'test://bars?size=64x48'}\n"))
    assert "key '<<' appears twice in cameras[1]: line 5 and line 6" in message   # write `<<: [*a, *b]`


def test_duplicate_keys_name_both_lines() -> None:
    message = error(GOOD + "tasks: []\n")
    assert "config test.yaml: key 'tasks' appears twice: line 8 and line 19" in message
    assert "Note: YAML would keep the value at line 19 and drop the one at line 8" in message
    message = error(GOOD.replace("    precision: int8\n", "    precision: int8\n    cameras: [rear]\n"))
    assert "key 'cameras' appears twice in tasks[1]: line 17 and line 18" in message
    message = error(GOOD.replace("realtime=0\n", "realtime=0\n    params: {a: 1, 'a': 2}\n"))
    assert "key 'a' appears twice in cameras[0].params: line 6, columns 14 and 20" in message


def test_oversized_config_is_refused(tmp_path: Path) -> None:
    from edge.config.loader import MAX_CONFIG_BYTES

    path = tmp_path / "edge.yaml"
    path.write_text(GOOD + "#" * MAX_CONFIG_BYTES)
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    size = len(GOOD) + MAX_CONFIG_BYTES
    assert f"config {path} is larger than 1 MiB\nNote: it has {size} bytes; the limit is 1048576 bytes" in str(
        info.value)
    assert "larger than 1 MiB" in error(GOOD + "#" * MAX_CONFIG_BYTES)
    assert parse(GOOD + "#" * (MAX_CONFIG_BYTES - len(GOOD) - 1)).version == 1


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["a FIFO", "a character device", "a directory"])
def test_a_config_that_is_no_regular_file_is_refused_at_once(tmp_path: Path, kind: str) -> None:
    """A FIFO with no writer blocked open() for good: the daemon hung, SIGTERM was logged and not acted on, and
    through `edge reload` the control socket wedged. It is opened without blocking and refused, as /dev/zero
    and a directory are, before a byte is read."""
    import os

    fifo = tmp_path / "edge.yaml"
    os.mkfifo(fifo)
    path = {"a FIFO": fifo, "a character device": Path("/dev/zero"), "a directory": tmp_path}[kind]
    with pytest.raises(ConfigError) as info:
        load_config(path, environ={})
    assert str(info.value).startswith(f"config {path} is not a regular file but {kind}\nHint: pass the config file")


def test_a_config_path_the_system_refuses_is_a_clear_error(tmp_path: Path) -> None:
    long = tmp_path / ("c" * 300 + ".yaml")                   # NAME_MAX is 255 bytes
    with pytest.raises(ConfigError, match=r"cannot read config file .*\.\.\. \(\d+ characters\): File name too long"):
        load_config(long, environ={})


def test_config_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "edge.yaml"
    path.write_bytes(GOOD.encode() + b"# \xff\n")
    with pytest.raises(ConfigError, match=rf"is not UTF-8 text\nNote: byte {len(GOOD) + 2} \(b'\\xff'\)"):
        load_config(path, environ={})


def test_values_from_the_environment_are_not_printed() -> None:
    env = {"CAM_PASS": "hunter2", "CAM_URI": "admin:hunter2@cam/stream", "CONF": "hunter2",
           "EDGE_RESULTS_ENDPOINT": "tcp://admin:hunter2@10.0.0.1:5555", "EDGE_LOG_LEVEL": "loud"}
    text = GOOD.replace("rtsp://user:secret@127.0.0.1:8554/rear", "rtsp://user:${CAM_PASS}@127.0.0.1:99999/rear")
    text = text.replace("file://videos/front.avi?realtime=0", "${CAM_URI}")
    text = text.replace("    enabled: false", "    enabled: false\n    params: {conf_threshold: 'x${CONF}'}")
    message = error(text, env)
    assert "hunter2" not in message
    assert "cameras[0].uri: camera URI '${CAM_URI}' has no scheme" in message       # the rule quotes it redacted
    assert "(value: '${CAM_URI}'; values from the environment not shown)" in message
    assert "cameras[1].uri: rtsp URI 'rtsp://user:${CAM_PASS}@127.0.0.1:99999/rear' has a port outside" in message
    assert "tasks[1].params.conf_threshold: Input should be a valid number" in message
    assert "(value: 'x${CONF}'; values from the environment not shown)" in message
    assert ("output.results (from $EDGE_RESULTS_ENDPOINT): tcp endpoint '${EDGE_RESULTS_ENDPOINT}' names a user"
            in message)
    assert "logging.level (from $EDGE_LOG_LEVEL)" in message and "(value: 'loud')" in message   # a level: shown
    message = error(GOOD, {"EDGE_RESULTS_ENDPOINT": "tcp://10.0.0.1:5555"})      # quoted by a rule of `output`
    assert "output: results on ${EDGE_RESULTS_ENDPOINT} without CURVE would reach anyone on the network" in message


def test_environment_values_quoted_by_other_keys_are_not_printed() -> None:
    text = GOOD.replace("id: rear", "id: ${CAM_PASS}").replace("cameras: [front]\n  - name: cars",
                                                                  "cameras: [side]\n  - name: cars")
    message = error(text, {"CAM_PASS": "hunter2"})
    assert "hunter2" not in message and "defined: ['front', '${CAM_PASS}']" in message


def test_a_camera_refuses_frames_over_its_max_frame_size() -> None:
    """`max_frame_size` bounds what a camera may deliver (8K UHD unless set): a frame over it is refused before it
    is decoded (edge/pipeline/cameras.py); the key takes WIDTHxHEIGHT up to 8192 per side."""
    assert parse(GOOD).cameras[0].max_frame == (7680, 4320)
    wide = GOOD.replace("realtime=0\n", "realtime=0\n    max_frame_size: 4320x7680\n", 1)
    assert parse(wide).cameras[0].max_frame == (4320, 7680)
    message = error(GOOD.replace("realtime=0\n", "realtime=0\n    max_frame_size: 16000x16000\n", 1))
    assert "cameras[0].max_frame_size: size 16000x16000 is outside 16..8192 pixels per side" in message


def test_a_camera_is_decoded_by_auto_cpu_or_nvdec_and_nvdec_reads_files_rtsp_and_csi_only() -> None:
    """`decode` (edge/pipeline/runtime.py, Decoding): auto unless set; nvdec is refused for a source no hardware
    decoder reads (csi:// passes: a Jetson's GStreamer reads it)."""
    assert [c.decode for c in parse(GOOD).cameras] == ["auto", "auto"]
    chosen = GOOD.replace("realtime=0\n", "realtime=0\n    decode: nvdec\n", 1).replace(
        "rear\n", "rear\n    decode: cpu\n", 1)
    assert [c.decode for c in parse(chosen).cameras] == ["nvdec", "cpu"]
    message = error(GOOD.replace("realtime=0\n", "realtime=0\n    decode: gpu\n", 1))
    assert "cameras[0].decode: Input should be 'auto', 'cpu' or 'nvdec' (value: 'gpu')" in message
    message = error(GOOD.replace("file://videos/front.avi?realtime=0\n", "test://bars\n    decode: nvdec\n", 1))
    assert ("cameras[0]: decode: nvdec reads file://, rtsp:// and csi:// cameras, not test://; use decode: auto"
            " (hardware decode where it can) or cpu") in message
    csi = GOOD.replace("file://videos/front.avi?realtime=0\n", "csi://0?size=1280x720\n    decode: nvdec\n", 1)
    assert parse(csi).cameras[0].decode == "nvdec"
    message = error(GOOD.replace("file://videos/front.avi?realtime=0\n", "v4l2:///dev/video0\n    decode: nvdec\n", 1))
    assert "cameras[0]: decode: nvdec reads file://, rtsp:// and csi:// cameras, not v4l2://" in message


def test_a_control_character_in_the_yaml_is_a_clear_error_with_its_line() -> None:
    """PyYAML's reader refuses control characters when the loader is made (yaml.reader.ReaderError), before the
    parse the old code guarded: a traceback at start, and "a bug in edge" on reload."""
    message = error(GOOD.replace("  - id: rear\n", "  - id: rear\x01\n"))
    assert message.startswith("config test.yaml is not valid YAML at line 6, column 13: the character '\\x01'"
                              " (U+0001) is not allowed\nNote: YAML text takes no control characters")
    old_mac = error(GOOD.replace("\n", "\r").replace("  - id: rear\r", "  - id: rear\x01\r"))   # CR line breaks
    assert "at line 6, column 13: the character '\\x01'" in old_mac


NUL_CASES = {            # key -> (a line of GOOD, what replaces it): each writes a NUL with YAML's "\\0" escape
    "uri": ("    uri: file://videos/front.avi?realtime=0\n", '    uri: "file:///videos/a\\0b.avi"\n'),
    "model": ("    model: models/yolo.onnx\n", '    model: "/m/a\\0b.onnx"\n'),
    "labels": ("    model: models/yolo.onnx\n",
               '    model: models/yolo.onnx\n    params: {labels: "/m/a\\0b.names"}\n'),
    "endpoint": ("version: 1\n", 'version: 1\ncontrol: {endpoint: "ipc:///run/c\\0.sock"}\n'),
    "results": ("version: 1\n", 'version: 1\noutput: {results: "ipc:///run/r\\0.sock"}\n'),
}


@pytest.mark.parametrize("key", NUL_CASES)
def test_a_nul_written_as_a_yaml_escape_is_refused_where_it_is(key: str) -> None:
    """A `"\\0"` escape yields a NUL, which the raw-character check cannot see: it reached os.stat, realpath, open,
    chmod and rename as a ValueError traceback (leaving a socket file cut at the NUL behind) at start, and "a bug in
    edge" on reload."""
    line, replaced = NUL_CASES[key]
    message = error(GOOD.replace(line, replaced, 1))
    assert f".{key}: contains a NUL character (\\0), which no path, URI, endpoint or name can hold" in message


@pytest.mark.parametrize("value,shown,note", [
    ("2001-13-45", "'2001-13-45' is no valid !!timestamp", "month must be in 1..12"),
    ("!!int abc", "'abc' is no valid !!int", "invalid literal for int() with base 10: 'abc'"),
    ("!!float abc", "'abc' is no valid !!float", "could not convert string to float: 'abc'"),
    ("1" * 4301, f"'{'1' * 40}...' is no valid !!int", "Exceeds the limit (4300 digits) for integer string"
                                                         " conversion: value has 4301 digits"),
    ("!!bool maybe", "'maybe' is no valid !!bool", None),
    ('!!int ""', "'' is no valid !!int", None),
    ("!!int rtsp://u:hunter22@cam", "'rtsp://u:***@cam' is no valid !!int", "invalid literal"),
])
def test_a_value_yaml_cannot_build_is_a_clear_error_with_its_line(value: str, shown: str, note: str | None) -> None:
    """PyYAML's scalar constructors raise Python's own errors (ValueError, IndexError, KeyError), not a YAMLError:
    they ended the daemon with a traceback at start."""
    message = error(GOOD.replace("    enabled: false\n", f"    enabled: false\n    rate_limit_hz: {value}\n"))
    assert message.startswith(f"config test.yaml is not valid YAML at line 19, column 20: {shown}\n")
    assert (f"\nNote: {note}" in message) if note else "\nNote:" not in message
    assert "Hint: write the value the key expects, or quote it" in message and "hunter22" not in message
    assert "set_int_max_str_digits" not in message


def test_a_key_yaml_cannot_build_is_a_clear_error_with_its_line() -> None:
    message = error(GOOD + '!!int "": 2\n')
    assert message.startswith("config test.yaml is not valid YAML at line 19, column 1: '' is no valid !!int\n")


URIS_WITH_PASSWORDS = {         # one of each camera URI form that the config refuses, with a password in it
    "file": "file://admin:hunter22@/v/a.avi?loop=2", "test": "test://admin:hunter22@stripes",
    "v4l2": "v4l2://admin:hunter22@/dev/video0?size=big", "rtsp": "rtsp://admin:hunter22@cam:99999/live",
    "csi": "csi://admin:hunter22@front",
}
ENDPOINTS_WITH_PASSWORDS = [     # (section, key, endpoint): no port, no CURVE, relative, no scheme, tcp for control
    ("output", "results", "tcp://u:hunter22@host"), ("output", "results", "tcp://u:hunter22@host:1"),
    ("output", "results", "ipc://u:hunter22@run/r.sock"), ("output", "results", "udp://u:hunter22@host:1"),
    ("control", "endpoint", "tcp://u:hunter22@host:1"), ("control", "endpoint", "ipc://u:hunter22@c.sock"),
]
WRITTEN = {"as is": '"{}"', "with a NUL": '"{}\\0"', "in a list": '["{}"]'}


def assert_no_password(message: str) -> None:
    assert "invalid config test.yaml" in message
    assert "hunter22" not in message and "ter22" not in message and ":***@" in message


@pytest.mark.parametrize("how", WRITTEN)
@pytest.mark.parametrize("form", URIS_WITH_PASSWORDS)
def test_a_camera_password_is_in_no_error(form: str, how: str) -> None:
    """The value was redacted only where it was a string at a `uri` key: a rule quoted the URI or a part of it
    ("csi URI 'csi://admin:hunter22@0' must name a sensor number", "unknown test pattern 'admin:hunter22@bars'"),
    the NUL rule and a list showed it whole, and a `?` in the password made its tail a parameter name."""
    for uri in (URIS_WITH_PASSWORDS[form], URIS_WITH_PASSWORDS[form].replace("hunter22", "hun?ter22")):
        written = WRITTEN[how].format(uri)
        assert_no_password(error(GOOD.replace("uri: file://videos/front.avi?realtime=0", f"uri: {written}")))


@pytest.mark.parametrize("how", WRITTEN)
@pytest.mark.parametrize("section,key,endpoint", ENDPOINTS_WITH_PASSWORDS)
def test_a_password_in_an_endpoint_is_in_no_error(section: str, key: str, endpoint: str, how: str) -> None:
    """The endpoint rules ("must be tcp://HOST:PORT", CURVE, control on ipc://) quoted it whole."""
    assert_no_password(error(GOOD + f"{section}:\n  {key}: {WRITTEN[how].format(endpoint)}\n"))


ONE_CAMERA = ("version: 1\n{extra}\ncameras:\n  - id: c\n    uri: {uri}\ntasks:\n  - name: t\n    type: detector\n"
              "    model: m.onnx\n    cameras: [c]\n")


@pytest.mark.parametrize("extra,uri,rule", [
    ('output: {results: "ipc:///run/edge/a\\ud800.sock"}', "test://bars",
     "output.results: endpoint 'ipc:///run/edge/a\\ud800.sock' contains '\\ud800', a lone surrogate"),
    ('control: {endpoint: "ipc:///run/edge/c\\ud800.sock"}', "test://bars", "control.endpoint: endpoint"),
    (f'output: {{results: "ipc:///run/edge/{"a" * 100}.sock"}}', "test://bars",
     "output.results: the path of an ipc endpoint has 115 bytes (UTF-8); a unix socket path holds at most 107"),
    (f'control: {{endpoint: "ipc:///run/{"c" * 300}/c.sock"}}', "test://bars",
     "control.endpoint: the path of an ipc endpoint has 312 bytes"),
    ('output: {results: "ipc:///run/edge/\\x07.sock"}', "test://bars",
     "output.results: endpoint 'ipc:///run/edge/\\x07.sock' contains the control character '\\x07' (U+0007)"),
    ("", '"file:///v/a\\x07.avi"',
     "cameras[0].uri: camera URI 'file:///v/a\\x07.avi' contains the control character '\\x07' (U+0007)"),
    ("", '"v4l2:///dev/video\\ud800"', "cameras[0].uri: camera URI 'v4l2:///dev/video\\ud800' contains '\\ud800'"),
])
def test_what_fails_at_start_is_refused_by_the_config(extra: str, uri: str, rule: str) -> None:
    """Each was accepted and failed at start with a raw exception: a surrogate (a YAML escape) with
    UnicodeEncodeError in the Publisher, ControlServer or Subscriber, a socket path over sun_path with ZMQError or
    OSError; a control character passed the reader's check of the raw text into a file path."""
    message = error(ONE_CAMERA.format(extra=extra, uri=uri))
    assert "1 problem(s)" in message and rule in message
