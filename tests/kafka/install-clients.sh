#!/usr/bin/env bash
# Installs the Kafka clients that tests/kafka_clients.rs runs against the broker:
#   Debian: kcat 1.7 (librdkafka 2.0.2), librdkafka-dev, python3-confluent-kafka 1.7 (for
#           /usr/bin/python3)
#   PyPI:   kafka-python 3.x (with zstandard, its zstd codec), confluent-kafka 2.x, aiokafka
#           and prometheus-client (the text format's parser, for the /metrics test) for the `python3` on PATH (a pyenv build on
#           this project's machines); if that python3 is Debian's own (externally managed), into a
#           venv at tests/kafka/.venv instead, which the tests then use
#   npm:    kafkajs 2.2.4 into tests/kafka/node (from its package-lock.json)
# Idempotent: installs only what is missing. Runs as root on Debian 12.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
export DEBIAN_FRONTEND=noninteractive

# --- Debian packages ---------------------------------------------------------------------------
debs=(kcat librdkafka-dev python3-confluent-kafka)
command -v node >/dev/null || debs+=(nodejs)
command -v npm >/dev/null || debs+=(npm)
missing=()
for p in "${debs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "install-clients: apt-get install ${missing[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
/usr/bin/python3 -c 'import confluent_kafka' ||
  { echo "install-clients: Debian's confluent-kafka does not import" >&2; exit 1; }

# --- PyPI packages -----------------------------------------------------------------------------
py=python3
stdlib=$(python3 -c 'import sysconfig; print(sysconfig.get_path("stdlib"))')
if [[ -e $stdlib/EXTERNALLY-MANAGED ]]; then
  # Debian's python3: keep its site-packages (and its confluent-kafka 1.7) untouched.
  if [[ ! -x $here/.venv/bin/python3 ]]; then
    dpkg-query -W -f='${Status}' python3-venv 2>/dev/null | grep -q "install ok installed" ||
      { apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null; }
    python3 -m venv "$here/.venv"
  fi
  py=$here/.venv/bin/python3
fi
if ! "$py" - <<'EOF' 2>/dev/null; then
import confluent_kafka, kafka, prometheus_client, zstandard, aiokafka
assert int(confluent_kafka.__version__.split(".")[0]) >= 2
assert int(kafka.__version__.split(".")[0]) >= 3
EOF
  echo "install-clients: pip install kafka-python confluent-kafka prometheus-client zstandard aiokafka ($py)"
  "$py" -m pip install -q --disable-pip-version-check --root-user-action=ignore \
    'kafka-python>=3,<4' 'confluent-kafka>=2,<3' 'prometheus-client>=0.20,<1' 'zstandard>=0.22' \
    'aiokafka>=0.11,<1'
fi

# --- npm ---------------------------------------------------------------------------------------
if [[ $(cd "$here/node" && node -p 'require("kafkajs/package.json").version' 2>/dev/null) != 2.2.4 ]]; then
  echo "install-clients: npm ci kafkajs (tests/kafka/node)"
  (cd "$here/node" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
echo "install-clients: kcat $(kcat -V 2>&1 | sed -n 's/^Version \([^ ]*\).*librdkafka \([^ ]*\).*/\1 (librdkafka \2)/p')," \
  "confluent-kafka $(/usr/bin/python3 -c 'import confluent_kafka as c; print(c.__version__)') (Debian)," \
  "$("$py" -c 'import confluent_kafka as c, kafka; print("confluent-kafka", c.__version__, "and kafka-python", kafka.__version__)') (pip)," \
  "kafkajs $(cd "$here/node" && node -p 'require("kafkajs/package.json").version')"
