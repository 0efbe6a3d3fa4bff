#!/bin/sh
# Entry script of the container, after the mautrix bridges' docker-run.sh:
#   1st start: no config       -> write $DATA_DIR/config.yaml from the example, exit;
#   2nd start: no registration -> generate tokens and $DATA_DIR/registration.yaml, exit;
#   then:                        exec the bridge.
# DATA_DIR and PYTHON_BIN may be overridden (the tests run this script outside Docker).
# Not BRIDGE_*: those names are config overrides.
set -eu

DATA_DIR="${DATA_DIR:-/data}"
PYTHON_BIN="${PYTHON_BIN:-python3}"
CONFIG="$DATA_DIR/config.yaml"
REGISTRATION="$DATA_DIR/registration.yaml"

if [ ! -f "$CONFIG" ]; then
	"$PYTHON_BIN" -c 'import importlib.resources as r, sys; sys.stdout.write(r.files("bridge").joinpath("example-config.yaml").read_text("utf-8"))' > "$CONFIG.tmp"
	mv "$CONFIG.tmp" "$CONFIG"
	echo "Didn't find a config file."
	echo "Copied the example config to $CONFIG."
	echo "Edit it (homeserver.address and domain, appservice.address, database.url),"
	echo "then start the container again to generate the registration."
	exit 0
fi

if [ ! -f "$REGISTRATION" ]; then
	"$PYTHON_BIN" -m bridge -g -c "$CONFIG" -r "$REGISTRATION"
	echo "Didn't find a registration file."
	echo "Generated tokens into $CONFIG and wrote $REGISTRATION."
	echo "Add it to the homeserver's app_service_config_files, restart the homeserver,"
	echo "then start this container again."
	exit 0
fi

exec "$PYTHON_BIN" -m bridge -c "$CONFIG" "$@"
