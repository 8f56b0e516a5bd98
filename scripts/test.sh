#!/usr/bin/env bash
# The test command (README, .ci/run): installs what the tests need on a
# fresh machine, idempotently, then runs everything.
#   - Debian: ffmpeg (ffprobe judges every media file), nginx with
#     libnginx-mod-rtmp (the RTMP server the publisher is tested against),
#     chromium (plays the cloud's live view through MSE, drives the console
#     test) and fonts-wqy-microhei (so the Chinese console's screenshots
#     show characters)
#   - PyPI: python-dvr and dvrip, each in its own venv (both install a
#     module named `dvrip`), plus dateparser/humanize for dvrip's `dvr` tool;
#     websockets and openapi-spec-validator for the independent IVT that
#     judges `ivr cloud`; nats-py, which watches the cluster's bus
#   - Debian: postgresql and nats-server for the cluster's tests (each test
#     starts its own on a loopback port, data in a temporary folder,
#     PostgreSQL as its own user, and stops it)
#   - Rust: fmt, clippy, unit/integration tests (nextest if present)
#   - interop: the third-party clients against `ivr sim dvrip`, Python's
#     xmlrpc.client against `ivr sim cvip`
#   - a short soak (`ivr bench soak`): the cloud killed and restarted under
#     load; fails when a device ends wrongly online/offline or an
#     acknowledged alarm is lost
set -euo pipefail
cd "$(dirname "$0")/.."

# Everything the tests write to a temporary folder (Rust's temp_dir() and
# Python's tempfile both follow TMPDIR) goes under one folder of this run,
# removed when the run ends however it ends: a machine that runs the tests
# every day does not fill its disk with recordings and clips. It is
# world-traversable because PostgreSQL runs as its own user inside it.
RUN_TMP=$(mktemp -d "${TMPDIR:-/tmp}/ivr-test.XXXXXX")
chmod 755 "$RUN_TMP"
trap 'rm -rf "$RUN_TMP"' EXIT
export TMPDIR=$RUN_TMP
# A fresh clone gains nothing from incremental caches, and they are half of
# a debug target's size; a developer may set CARGO_INCREMENTAL=1.
export CARGO_INCREMENTAL=${CARGO_INCREMENTAL:-0}

step() { printf '\n== %s\n' "$*"; }

step "system packages"
missing=()
command -v ffprobe >/dev/null || missing+=(ffmpeg)
command -v python3 >/dev/null || missing+=(python3 python3-venv)
command -v nginx >/dev/null || missing+=(nginx)
test -e /usr/lib/nginx/modules/ngx_rtmp_module.so || missing+=(libnginx-mod-rtmp)
command -v chromium >/dev/null || missing+=(chromium)
test -e /usr/share/fonts/truetype/wqy/wqy-microhei.ttc || missing+=(fonts-wqy-microhei)
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || missing+=(postgresql)
command -v nats-server >/dev/null || test -x /usr/sbin/nats-server || missing+=(nats-server)
if ((${#missing[@]})); then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
echo "ffprobe: $(command -v ffprobe), nginx: $(command -v nginx)"

step "python venvs"
VENVS=${IVR_VENVS:-$HOME/.cache/ivr/venvs}
venv() { # NAME IMPORT-CHECK PACKAGES...
  local name=$1 check=$2
  shift 2
  if ! "$VENVS/$name/bin/python" -c "$check" 2>/dev/null; then
    rm -rf "${VENVS:?}/$name"
    python3 -m venv "$VENVS/$name"
    "$VENVS/$name/bin/pip" install -q --disable-pip-version-check "$@"
  fi
  echo "$name: ok ($VENVS/$name)"
}
venv pydvr "import dvrip; dvrip.DVRIPCam" python-dvr
venv dvrip "import dvrip.io, dateparser, humanize" dvrip dateparser humanize
venv ivt "import websockets.sync.client, websockets.asyncio.client, openapi_spec_validator, nats" websockets openapi-spec-validator nats-py
# Playwright drives Debian's chromium (executable_path); its own browser
# download is never used.
venv browser "import playwright.sync_api, websockets.sync.client" playwright websockets

step "format, lints and doc links"
python3 scripts/check_links.py
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "rust tests"
if command -v cargo-nextest >/dev/null; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  cargo test --workspace --locked --no-fail-fast
fi

cargo build --locked -p ivr
step "interop: an independent IVT (Python websockets) against ivr cloud"
"$VENVS/ivt/bin/python" tests/interop/ivt_check.py --ivr target/debug/ivr
step "the cluster: three ivr cloud processes on PostgreSQL + NATS, 200 devices, a node killed (websockets, nats-py)"
PATH="$PATH:/usr/sbin" "$VENVS/ivt/bin/python" tests/interop/cluster_check.py --ivr target/debug/ivr
step "interop: live view (ffmpeg, websockets, Chromium via Playwright) against ivr cloud + ivr edge"
"$VENVS/browser/bin/python" tests/interop/live_check.py --ivr target/debug/ivr
step "the web console in Chromium (Playwright): logins, roles, live, grid, PTZ, timeline, events, H.265"
"$VENVS/browser/bin/python" tests/interop/console_check.py --ivr target/debug/ivr --out target/console-screenshots
step "interop: cloud recording (policies, playback, kill -9, retention) judged by ffprobe"
python3 tests/interop/record_check.py --ivr target/debug/ivr
step "soak and chaos: 200 devices, the cloud killed twice, connections cut (ivr bench soak)"
target/debug/ivr bench soak --devices 200 --secs 30 --kills 2 --cuts 3 --keepalive-secs 2 --stop-devices 10
step "interop: Python's xmlrpc.client against ivr sim cvip"
python3 tests/interop/cvip_check.py --ivr target/debug/ivr
step "interop: python-dvr, dvrip and ffprobe against ivr"
python3 tests/interop/run.py --ivr target/debug/ivr --venvs "$VENVS"
