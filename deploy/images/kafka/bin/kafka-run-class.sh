#!/bin/bash
# Runs a class with the image's Kafka jars, like kafka-run-class.sh of the Kafka distribution.
# Tools log WARN and above to stderr (KAFKA_TOOLS_LOG4J_LOGLEVEL changes the level).
set -euo pipefail

kafka_dir=/opt/kafka
heap_opts=${KAFKA_HEAP_OPTS:--Xmx256m}
perf_opts=${KAFKA_JVM_PERFORMANCE_OPTS:--XX:+UseSerialGC -XX:TieredStopAtLevel=1 -Djava.awt.headless=true}
log4j_opts=${KAFKA_LOG4J_OPTS:--Dlog4j2.configurationFile=$kafka_dir/config/tools-log4j2.properties}

# The *_OPTS variables are word lists, as in Kafka's own scripts.
# shellcheck disable=SC2086
exec java $heap_opts $perf_opts ${KAFKA_OPTS:-} $log4j_opts -cp "$kafka_dir/libs/*" "$@"
