#!/bin/bash
# Entry point of sluice/elasticsearch and sluice/opensearch (deploy/images/opensearch links here).
#
# Configuration is compatible with the official images:
#   - every environment variable whose name looks like a setting (lower case, with a dot:
#     `discovery.type=single-node`, `http.port=9201`) becomes `-E name=value`;
#   - Elasticsearch: ES_SETTING_<NAME> too ('_' -> '.', '__' -> '_'):
#     ES_SETTING_XPACK_SECURITY_ENABLED=false -> xpack.security.enabled=false;
#   - ES_JAVA_OPTS / OPENSEARCH_JAVA_OPTS: JVM options; without -Xmx, "-Xms512m -Xmx512m" is added;
#   - OpenSearch: DISABLE_SECURITY_PLUGIN=true disables the security plugin if it is installed
#     (the integ-test distribution has none); DISABLE_INSTALL_DEMO_CONFIG is accepted and ignored.
# Defaults (each overridable): network.host=127.0.0.1, http.port=9200, transport.port=9300,
# cluster.name=docker-cluster, cluster.routing.allocation.disk.threshold_enabled=false,
# xpack.security.enabled=false (Elasticsearch), and discovery.type=single-node unless one of
# discovery.type, discovery.seed_hosts, discovery.seed_providers, cluster.initial_master_nodes,
# cluster.initial_cluster_manager_nodes is given.
#
# Security (Elasticsearch only; for tests of TLS and basic auth):
#   - SLUICE_ES_USER + SLUICE_ES_PASSWORD: a file-realm superuser (bin/elasticsearch-users useradd);
#   - SLUICE_ES_TLS=true: HTTPS with a certificate for localhost / 127.0.0.1 signed by a CA made at
#     the first start with bin/elasticsearch-certutil (PKCS#12 in config/certs/); the CA certificate
#     in PEM is config/certs/ca.crt, for clients (`docker cp`);
#   either one turns xpack.security.enabled on (unless it is set explicitly). Both survive a restart.
#
# `docker run IMAGE` starts the server; `docker run IMAGE some-command` runs that command.
set -euo pipefail

if [[ -x /usr/share/elasticsearch/bin/elasticsearch ]]; then
  product=elasticsearch
  java_opts_var=ES_JAVA_OPTS
  java_home_var=ES_JAVA_HOME
else
  product=opensearch
  java_opts_var=OPENSEARCH_JAVA_OPTS
  java_home_var=OPENSEARCH_JAVA_HOME
fi
home=/usr/share/$product

if [[ $# -gt 0 && $1 != eswrapper && $1 != opensearchwrapper && $1 != -* ]]; then
  exec "$@"
fi
if [[ $# -gt 0 && $1 != -* ]]; then
  shift # the wrapper name; any remaining arguments go to bin/$product
fi

declare -A settings=()
declare -a order=()

set_setting() {
  [[ -v "settings[$1]" ]] || order+=("$1")
  settings[$1]=$2
}

default_setting() {
  [[ -v "settings[$1]" ]] || set_setting "$1" "$2"
}

while IFS= read -r -d '' entry; do
  name=${entry%%=*}
  value=${entry#*=}
  if [[ $name =~ ^[a-z0-9_]+\.[a-z0-9_.-]+$ ]]; then
    set_setting "$name" "$value"
  elif [[ $product == elasticsearch && $name == ES_SETTING_?* ]]; then
    key=${name#ES_SETTING_}
    key=${key,,}
    key=${key//__/$'\x01'}
    key=${key//_/.}
    key=${key//$'\x01'/_}
    set_setting "$key" "$value"
  fi
done < <(env -0)

default_setting cluster.name docker-cluster
default_setting network.host 127.0.0.1
default_setting http.port 9200
default_setting transport.port 9300
default_setting cluster.routing.allocation.disk.threshold_enabled false
if [[ $product == elasticsearch ]]; then
  tools_env=(env -u JAVA_HOME "ES_JAVA_HOME=${ES_JAVA_HOME:-${JAVA_HOME:-/usr/lib/jvm/java-17}}")
  if [[ ${SLUICE_ES_TLS:-false} == true ]]; then
    certs=$home/config/certs
    if [[ ! -f $certs/http.p12 ]]; then
      mkdir -p "$certs"
      "${tools_env[@]}" "$home/bin/elasticsearch-certutil" ca --silent --out "$certs/ca.p12" --pass ""
      "${tools_env[@]}" "$home/bin/elasticsearch-certutil" cert --silent --ca "$certs/ca.p12" --ca-pass "" \
        --dns localhost --ip 127.0.0.1 --out "$certs/http.p12" --pass ""
      keytool -exportcert -rfc -keystore "$certs/ca.p12" -storetype PKCS12 -storepass "" -alias ca \
        -file "$certs/ca.crt" >/dev/null
      chmod 644 "$certs/ca.crt"
    fi
    default_setting xpack.security.enabled true
    default_setting xpack.security.http.ssl.enabled true
    default_setting xpack.security.http.ssl.keystore.path certs/http.p12
  fi
  if [[ -n ${SLUICE_ES_USER:-} ]]; then
    if ! grep -q "^${SLUICE_ES_USER}:" "$home/config/users" 2>/dev/null; then
      "${tools_env[@]}" "$home/bin/elasticsearch-users" useradd "$SLUICE_ES_USER" \
        -p "${SLUICE_ES_PASSWORD:?SLUICE_ES_PASSWORD is required with SLUICE_ES_USER}" -r superuser
    fi
    default_setting xpack.security.enabled true
  fi
  unset SLUICE_ES_PASSWORD
  default_setting xpack.security.enabled false
fi
multi_node=false
for key in discovery.type discovery.seed_hosts discovery.seed_providers \
  cluster.initial_master_nodes cluster.initial_cluster_manager_nodes; do
  [[ -v "settings[$key]" ]] && multi_node=true
done
[[ $multi_node == true ]] || set_setting discovery.type single-node
if [[ $product == opensearch && ${DISABLE_SECURITY_PLUGIN:-false} == true && -d $home/plugins/opensearch-security ]]; then
  default_setting plugins.security.disabled true
fi

java_opts=${!java_opts_var:-}
[[ $java_opts == *-Xmx* ]] || java_opts="-Xms512m -Xmx512m${java_opts:+ $java_opts}"
export "$java_opts_var=$java_opts"
export "$java_home_var=${!java_home_var:-${JAVA_HOME:-/usr/lib/jvm/java-17}}"
unset JAVA_HOME # else: "warning: ignoring JAVA_HOME=...; using ES_JAVA_HOME"

# For the HEALTHCHECK: where this node answers HTTP.
http_host=${settings[http.host]:-${settings[network.host]}}
case $http_host in
  0.0.0.0 | _local_ | _site_ | "[::]" | localhost) http_host=127.0.0.1 ;;
esac
scheme=http
[[ ${settings[xpack.security.http.ssl.enabled]:-false} == true ]] && scheme=https
echo "$scheme://$http_host:${settings[http.port]%%-*}" >/tmp/search-http-url 2>/dev/null || true

args=()
for key in "${order[@]}"; do
  args+=(-E "$key=${settings[$key]}")
done
exec "$home/bin/$product" "${args[@]}" "$@"
