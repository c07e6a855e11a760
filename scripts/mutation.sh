#!/usr/bin/env bash
# Mutation testing of the core with mutmut (not part of CI or scripts/test.sh: it takes minutes per module).
# Each module is mutated in a scratch copy of the working tree (never in place) and only the test files
# that concern it are run against each mutant. docs/testing.md says what it covers and how to read it.
#
#   scripts/mutation.sh                  every module below
#   scripts/mutation.sh client pipeline  only these
#   MUTATION_JOBS=1 MUTATION_DIR=/var/tmp/m scripts/mutation.sh detector
#
# Per module it prints killed/total and lists the survivors; each survivor's diff is written to
# $MUTATION_DIR/<module>/survivors.diff and the table to $MUTATION_DIR/summary.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PY=$ROOT/.venv/bin/python
MUTMUT_VERSION=3.8.1
JOBS=${MUTATION_JOBS:-2}
OUT=${MUTATION_DIR:-${TMPDIR:-/tmp}/edge-mutation}

# module -> "file | test files | mutant name patterns (the functions that are mutated)"
declare -A SPEC=(
  [pipeline]="edge/pipeline/lanes.py | tests/pipeline/test_lanes.py | edge.pipeline.lanes.*"
  [detector]="edge/tasks/detector.py | tests/tasks/test_detector.py | edge.tasks.detector.*"
  [publisher]="edge/wire/publisher.py | tests/wire/test_publisher.py | edge.wire.publisher.*"
  [client]="edge/wire/client.py | tests/wire/test_client.py | edge.wire.client.xǁSubscriberǁ* edge.wire.client.xǁMessageǁ*"
  [evaluate]="edge/tools/evaluate.py | tests/tools/test_evaluate.py | edge.tools.evaluate.x_iou_matrix__* edge.tools.evaluate.x_score__*
    edge.tools.evaluate.x_match__* edge.tools.evaluate.x_average_precision__* edge.tools.evaluate.xǁClassStatsǁ*
    edge.tools.evaluate.x_evaluate_against__* edge.tools.evaluate.x_candidate_detections__*
    edge.tools.evaluate.x__report__* edge.tools.evaluate.x_format_report__*"
  # the INT8 gate: quantize, evaluate against fp32, refuse below the minimum F1, keep the other variants
  [assets]="edge/tools/assets.py | tests/tools/test_assets.py::test_refused_int8_keeps_the_other_variants_and_is_not_remade
    tests/tools/test_assets.py::test_variants_are_remade_when_their_inputs_change tests/tools/test_assets.py::test_missing_variant_is_remade_alone
    tests/tools/test_assets.py::test_a_variant_that_cannot_be_made_does_not_block_the_others
    tests/tools/test_assets.py::test_leftovers_of_a_killed_run_are_removed tests/tools/test_assets.py::test_complete_cache_fetches_nothing
    tests/tools/test_assets.py::test_int8_is_calibrated_on_the_pool_gated_on_held_out_frames_and_recorded
    tests/tools/test_assets.py::test_an_unreadable_manifest_is_made_again_from_scratch
    | edge.tools.assets.x__int8_variant__* edge.tools.assets.x__build_variants__* edge.tools.assets.x__current__*
    edge.tools.assets.x__remove_leftovers__*"
  # reconnect with backoff
  [sources]="edge/pipeline/cameras.py | tests/pipeline/test_cameras.py | edge.pipeline.cameras.xǁCameraǁ_run__* edge.pipeline.cameras.xǁCameraǁ_reconnect__*
    edge.pipeline.cameras.xǁCameraǁ_lost__*"
  # the supervisor's policy: ladder, hysteresis, dwell, per-task choice
  [policy]="edge/supervisor/policy.py | tests/supervisor/test_policy.py | edge.supervisor.policy.*"
  # the supervisor's thresholds and their rules (the policy's config)
  [thresholds]="edge/config/supervisor.py | tests/supervisor/test_policy.py tests/config/test_supervisor.py | edge.config.supervisor.*"
  # a task's variants and the switch at a frame boundary
  [runtime]="edge/pipeline/runtime.py | tests/pipeline/test_runtime.py | edge.pipeline.runtime.xǁTaskRuntimeǁ*"
  # what a changed config file changes
  [reload]="edge/daemon/reload.py | tests/daemon/test_reload.py::test_the_plan_restarts_only_what_changed
    tests/daemon/test_reload.py::test_a_changed_camera_restarts_the_tasks_that_read_it
    tests/daemon/test_reload.py::test_a_changed_socket_section_refuses_the_whole_reload
    tests/daemon/test_reload.py::test_a_changed_log_level_is_applied_alone
    tests/daemon/test_reload.py::test_every_changed_socket_section_is_named | edge.daemon.reload.*"
  # the bundle archive's checks: manifest, member paths and kinds, sizes, the bounded single pass
  [archive]="edge/deploy/archive.py | tests/deploy/test_archive.py tests/deploy/test_bundles.py | edge.deploy.archive.xǁBundleManifestǁcheck__*
    edge.deploy.archive.xǁBundleManifestǁ_entry_problems__* edge.deploy.archive.x_path_problem__*
    edge.deploy.archive.x__expected_entry__* edge.deploy.archive.x__unsafe_kind__*"
  # anti-rollback and target binding: what an install refuses before extracting
  [admission]="edge/deploy/admission.py | tests/deploy/test_antirollback.py | edge.deploy.admission.*"
  # the highest committed version (committed.json) and the pending install (pending.json)
  [marks]="edge/deploy/marks.py | tests/deploy/test_antirollback.py tests/deploy/test_pending.py | edge.deploy.marks.*"
  # a pending install's commit and rollback, and installs refused while one is pending
  [pending]="edge/deploy/install.py | tests/deploy/test_pending.py | edge.deploy.install.x_commit_pending__*
    edge.deploy.install.x_rollback_pending__* edge.deploy.install.x__committed__* edge.deploy.install.x__drop_pending__*
    edge.deploy.install.x__refuse_pending__* edge.deploy.install.x__healthy__*"
  # the Mender Update Module's states (which slot operation each runs) and pack's device-type check
  # (in-process tests: the real client and the CLI run the module in processes that mutmut does not follow)
  [mender]="edge/deploy/mender.py | tests/deploy/test_mender.py::test_the_states_run_install_commit_and_rollback_of_a_pending_bundle
    tests/deploy/test_mender.py::test_the_payload_and_the_artifact_name_are_checked_before_any_slot_changes
    tests/deploy/test_mender.py::test_device_types_are_checked_against_the_plans_in_process
    tests/deploy/test_mender.py::test_the_payload_names_what_it_holds_in_process
    | edge.deploy.mender.x_run_state__* edge.deploy.mender.x__install__*
    edge.deploy.mender.x__pending__* edge.deploy.mender.x_payload__* edge.deploy.mender.x_artifact_version__*
    edge.deploy.mender.x_check_device_types__*"
  # the results socket's connection gate and subscription records
  [peers]="edge/wire/peers.py | tests/wire/test_peers.py tests/wire/test_gate.py | edge.wire.peers.xǁGateǁ_over__* edge.wire.peers.xǁGateǁ_rate__*
    edge.wire.peers.xǁGateǁ_accepted__* edge.wire.peers.xǁGateǁ_closed__* edge.wire.peers.xǁGateǁended__*
    edge.wire.peers.xǁSubscriptionsǁinbound__* edge.wire.peers.xǁSubscriptionsǁ_subscription__*
    edge.wire.peers.xǁSubscriptionsǁ_refusal__* edge.wire.peers.xǁSubscriptionsǁ_forget__*
    edge.wire.peers.xǁSubscriptionsǁemptied__*"
  # what the daemon tells systemd (EXTEND_TIMEOUT_USEC only while starting, its cap) and which lanes stop its pings
  [systemd]="edge/daemon/systemd.py | tests/systemd/test_unit.py::test_the_notifier_speaks_to_path_and_abstract_sockets
    tests/systemd/test_unit.py::test_the_daemon_says_ready_pings_while_frames_flow_and_says_stopping
    tests/systemd/test_unit.py::test_a_stalled_lane_stops_the_watchdog_pings
    tests/daemon/test_systemd.py::test_a_start_is_extended_only_after_progress_so_a_hung_start_times_out
    tests/daemon/test_systemd.py::test_progress_past_the_start_cap_or_after_ready_extends_nothing
    tests/daemon/test_systemd.py::test_a_lane_is_stalled_after_a_whole_interval_with_frames_in_flight_and_none_finished
    tests/daemon/test_systemd.py::test_a_lane_without_frames_in_flight_is_not_stalled
    tests/daemon/test_systemd.py::test_an_ended_lane_is_not_stalled
    tests/daemon/test_systemd.py::test_the_watchdog_interval_is_read_as_systemd_sets_it
    tests/daemon/test_systemd.py::test_each_notification_is_one_datagram_of_its_lines
    tests/daemon/test_systemd.py::test_a_manager_that_is_gone_is_warned_of_once
    tests/daemon/test_systemd.py::test_notify_socket_is_a_path_or_an_abstract_name
    | edge.daemon.systemd.*"
  # device frames: the bounded pool, each reader's release, reuse only after their events
  [surfaces]="edge/gpu/surfaces.py | tests/gpu/test_surfaces.py | edge.gpu.surfaces.*"
)
ORDER=(client pipeline detector publisher evaluate sources assets policy thresholds runtime reload archive admission marks
  pending peers systemd surfaces)

modules=("$@")
[ ${#modules[@]} -gt 0 ] || modules=("${ORDER[@]}")
for m in "${modules[@]}"; do
  [ -n "${SPEC[$m]:-}" ] || { echo "unknown module '$m' (known: ${ORDER[*]})" >&2; exit 2; }
done

[ -x "$PY" ] || { echo "no .venv here: run scripts/setup.sh --dev first" >&2; exit 2; }
if ! "$PY" -c "import importlib.metadata as m, sys; sys.exit(m.version('mutmut') != '$MUTMUT_VERSION')" 2>/dev/null; then
  echo "installing mutmut $MUTMUT_VERSION into .venv"
  "$PY" -m pip install -q "mutmut==$MUTMUT_VERSION"
fi

# Mutants run against a copy of the asset cache: a mutant of the assets code must not rewrite the real one.
CACHE=${EDGE_CACHE:-$HOME/.cache/edge}
"$ROOT/.venv/bin/edge" assets fetch --cache-dir "$CACHE" > /dev/null

mkdir -p "$OUT"
: > "$OUT/summary.txt"
for m in "${modules[@]}"; do
  spec=${SPEC[$m]}
  rest=${spec#*|}                                 # "FILE | TESTS... | NAMES...", split on white space
  read -r file <<< "${spec%%|*}"
  read -r -d '' -a tests <<< "${rest%%|*}" || true   # -d '': across lines; it ends at end of input (status 1)
  read -r -d '' -a names <<< "${rest#*|}" || true
  work=$OUT/$m
  rm -rf "$work" && mkdir -p "$work"
  # the working tree as it is (tracked and untracked files, not ignored ones), so uncommitted tests count
  git ls-files -z --cached --others --exclude-standard \
    | "$PY" -c 'import os, shutil, sys
for path in sys.stdin.buffer.read().decode().split("\0"):
    if path and os.path.isfile(path):
        os.makedirs(os.path.join(sys.argv[1], os.path.dirname(path)), exist_ok=True)
        shutil.copy2(path, os.path.join(sys.argv[1], path))' "$work"
  {
    echo "[mutmut]"
    echo "source_paths = edge/"
    echo "only_mutate = $file"
    echo "also_copy = pytest.ini"
    echo "use_git_change_detection = false"
    echo "pytest_add_cli_args_test_selection ="
    printf '    %s\n' "${tests[@]}"
  } > "$work/setup.cfg"
  echo "== $m: mutating $file, tests: ${tests[*]} (log: $work/run.log)"
  started=$(date +%s)
  cp -a "$CACHE" "$work/cache"
  # a mutant that breaks a connection wait fails it in seconds, not after the suite's 60 s bound (tests/conftest.py)
  (cd "$work" && EDGE_CACHE="$work/cache" EDGE_TEST_PEER_S=5 "$ROOT/.venv/bin/mutmut" run --max-children "$JOBS" "${names[@]}" \
      > run.log 2>&1) \
    || { echo "   mutmut failed; the end of $work/run.log:"; tail -n 20 "$work/run.log"; continue; }
  (cd "$work" && "$ROOT/.venv/bin/mutmut" results --all true > results.txt)
  (cd "$work" && "$PY" - "$ROOT/.venv/bin/mutmut" "$m" "$(( $(date +%s) - started ))" "${names[@]}" <<'EOF' \
      | tee -a "$OUT/summary.txt"
import collections, fnmatch, subprocess, sys
mutmut, module, seconds, patterns = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
status = {}
for line in open("results.txt", encoding="utf-8"):
    name, _, state = line.strip().rpartition(": ")
    if name and any(fnmatch.fnmatchcase(name, p) for p in patterns):
        status[name] = state
counts = collections.Counter(status.values())
detected = counts["killed"] + counts["timeout"]
checked = sum(n for s, n in counts.items() if s != "not checked")
rate = f"{100 * detected / checked:.1f}%" if checked else "-"
rest = ", ".join(f"{s} {n}" for s, n in sorted(counts.items()) if s not in ("killed", "timeout"))
print(f"{module:<10} killed {detected}/{checked} = {rate} (timeouts {counts['timeout']}; {rest or 'no others'};"
      f" {seconds} s)")
survivors = sorted(n for n, s in status.items() if s not in ("killed", "timeout"))
with open("survivors.diff", "w", encoding="utf-8") as out:
    for name in survivors:
        print(f"    {status[name]}: {name}")
        diff = subprocess.run([mutmut, "show", name], capture_output=True, text=True).stdout
        out.write(diff + "\n")
EOF
  )
done
echo "summary: $OUT/summary.txt"
