{{/* Chart name. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Base name of every object: the release name, unless it already contains the chart name. */}}
{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "sluice.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Selector labels of a component: (dict "ctx" $ "component" "shipper"). */}}
{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* All labels of a component's objects. */}}
{{- define "sluice.labels" -}}
{{ include "sluice.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: sluice
helm.sh/chart: {{ include "sluice.chart" .ctx }}
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sluice.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "sluice.shipper.serviceAccountName" -}}
{{- if .Values.shipper.serviceAccount.create -}}
{{- default (printf "%s-shipper" (include "sluice.fullname" .)) .Values.shipper.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.shipper.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "sluice.indexer.serviceAccountName" -}}
{{- if .Values.indexer.serviceAccount.create -}}
{{- default (printf "%s-indexer" (include "sluice.fullname" .)) .Values.indexer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.indexer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* Bootstrap brokers as a list (JSON): the dependency chart's pods, or externalKafka.brokers. */}}
{{- define "sluice.kafkaBrokers" -}}
{{- if .Values.kafka.enabled -}}
{{- $brokers := list -}}
{{- $name := printf "%s-kafka" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- range $i := until (int .Values.kafka.replicas) -}}
{{- $brokers = append $brokers (printf "%s-%d.%s-headless.%s.svc:9092" $name $i $name $.Release.Namespace) -}}
{{- end -}}
{{- toJson $brokers -}}
{{- else -}}
{{- if not .Values.externalKafka.brokers -}}
{{- fail "kafka.enabled=false needs externalKafka.brokers (host:port list)" -}}
{{- end -}}
{{- toJson .Values.externalKafka.brokers -}}
{{- end -}}
{{- end -}}

{{/* Mount paths of the Kafka and Elasticsearch CA / client certificates. */}}
{{- define "sluice.kafkaCaPath" -}}/etc/sluice/kafka-ca/{{ .Values.kafkaClient.tls.caSecret.key }}{{- end -}}
{{- define "sluice.esCaPath" -}}/etc/sluice/es-ca/{{ .Values.elasticsearch.tls.caSecret.key }}{{- end -}}

{{/* Further librdkafka properties of both binaries (JSON object; security is `kafka.security`). */}}
{{- define "sluice.kafkaProperties" -}}
{{- toJson (deepCopy .Values.kafkaClient.properties) -}}
{{- end -}}

{{/*
`kafka.security` of both binaries (JSON object; empty for plaintext): the protocol, the mounted CA
and client certificate, the SASL mechanism. The SASL user and password come from the referenced
Secret as environment (sluice.kafkaSecretEnv), never from values.
*/}}
{{- define "sluice.kafkaSecurity" -}}
{{- $c := .Values.kafkaClient -}}
{{- $s := dict -}}
{{- if and $c.tls.enabled $c.sasl.enabled -}}
{{- $_ := set $s "protocol" "sasl_ssl" -}}
{{- else if $c.tls.enabled -}}
{{- $_ := set $s "protocol" "ssl" -}}
{{- else if $c.sasl.enabled -}}
{{- $_ := set $s "protocol" "sasl_plaintext" -}}
{{- end -}}
{{- if $c.tls.enabled -}}
{{- $tls := dict -}}
{{- if $c.tls.caSecret.name -}}
{{- $_ := set $tls "ca_file" (include "sluice.kafkaCaPath" .) -}}
{{- end -}}
{{- if $c.tls.clientCertSecret -}}
{{- $_ := set $tls "cert_file" "/etc/sluice/kafka-client/tls.crt" -}}
{{- $_ := set $tls "key_file" "/etc/sluice/kafka-client/tls.key" -}}
{{- end -}}
{{- if $tls -}}
{{- $_ := set $s "tls" $tls -}}
{{- end -}}
{{- end -}}
{{- if $c.sasl.enabled -}}
{{- if not $c.sasl.secret.name -}}
{{- fail "kafkaClient.sasl.enabled needs kafkaClient.sasl.secret.name (an existing Secret)" -}}
{{- end -}}
{{- $_ := set $s "sasl" (dict "mechanism" (lower $c.sasl.mechanism)) -}}
{{- end -}}
{{- toJson $s -}}
{{- end -}}

{{/* The `kafka` section both binaries share: brokers, records topic, security, properties. */}}
{{- define "sluice.kafkaCommon" -}}
{{- $k := dict "brokers" (include "sluice.kafkaBrokers" . | fromJsonArray) "topic" .Values.topics.records
      "properties" (include "sluice.kafkaProperties" . | fromJson) -}}
{{- $sec := include "sluice.kafkaSecurity" . | fromJson -}}
{{- if $sec -}}
{{- $_ := set $k "security" $sec -}}
{{- end -}}
{{- toJson $k -}}
{{- end -}}

{{/*
Secret-backed environment of a container talking to Kafka: the SASL credentials as
SLUICE_KAFKA__SECURITY__SASL__USERNAME / __PASSWORD (`kafka.security.sasl.*`).
*/}}
{{- define "sluice.kafkaSecretEnv" -}}
{{- $s := .Values.kafkaClient.sasl -}}
{{- if $s.enabled }}
- name: SLUICE_KAFKA__SECURITY__SASL__USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $s.secret.name }}, key: {{ $s.secret.usernameKey }}}
- name: SLUICE_KAFKA__SECURITY__SASL__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $s.secret.name }}, key: {{ $s.secret.passwordKey }}}
{{- end }}
{{- end -}}

{{/* Elasticsearch credentials from the referenced Secret. */}}
{{- define "sluice.esSecretEnv" -}}
{{- $a := .Values.elasticsearch.auth.secret -}}
{{- if $a.name }}
{{- if $a.apiKeyKey }}
- name: SLUICE_ELASTICSEARCH__AUTH__API_KEY
  valueFrom:
    secretKeyRef: {name: {{ $a.name }}, key: {{ $a.apiKeyKey }}}
{{- else }}
- name: SLUICE_ELASTICSEARCH__AUTH__USERNAME
  valueFrom:
    secretKeyRef: {name: {{ $a.name }}, key: {{ $a.usernameKey }}}
- name: SLUICE_ELASTICSEARCH__AUTH__PASSWORD
  valueFrom:
    secretKeyRef: {name: {{ $a.name }}, key: {{ $a.passwordKey }}}
{{- end }}
{{- end }}
{{- end -}}

{{/* Volume mounts for the Kafka certificates. */}}
{{- define "sluice.kafkaTlsMounts" -}}
{{- $t := .Values.kafkaClient.tls -}}
{{- if and $t.enabled $t.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/sluice/kafka-ca
  readOnly: true
{{- end }}
{{- if and $t.enabled $t.clientCertSecret }}
- name: kafka-client
  mountPath: /etc/sluice/kafka-client
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sluice.kafkaTlsVolumes" -}}
{{- $t := .Values.kafkaClient.tls -}}
{{- if and $t.enabled $t.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ $t.caSecret.name }}
    items: [{key: {{ $t.caSecret.key }}, path: {{ $t.caSecret.key }}}]
{{- end }}
{{- if and $t.enabled $t.clientCertSecret }}
- name: kafka-client
  secret:
    secretName: {{ $t.clientCertSecret }}
{{- end }}
{{- end -}}

{{/* Volume mounts / volumes for the Elasticsearch CA. */}}
{{- define "sluice.esTlsMounts" -}}
{{- if .Values.elasticsearch.tls.caSecret.name }}
- name: es-ca
  mountPath: /etc/sluice/es-ca
  readOnly: true
{{- end }}
{{- end -}}

{{- define "sluice.esTlsVolumes" -}}
{{- with .Values.elasticsearch.tls.caSecret }}
{{- if .name }}
- name: es-ca
  secret:
    secretName: {{ .name }}
    items: [{key: {{ .key }}, path: {{ .key }}}]
{{- end }}
{{- end }}
{{- end -}}

{{/* The rendered sluice-indexer.yaml (used by the Deployment's ConfigMap and the setup hook's). */}}
{{- define "sluice.indexerConfig" -}}
{{- $v := .Values -}}
{{- $es := dict "urls" $v.elasticsearch.urls "index" $v.elasticsearch.index
      "template" (dict "shards" $v.elasticsearch.template.shards "replicas" $v.elasticsearch.template.replicas) -}}
{{- if $v.elasticsearch.tls.caSecret.name -}}
{{- $_ := set $es "tls" (dict "ca_file" (include "sluice.esCaPath" .)) -}}
{{- end -}}
{{- $kafka := merge (dict "group_id" $v.indexer.groupId "partitions" (int $v.topics.partitions)
      "revoke_timeout" (printf "%ds" (int $v.indexer.revokeTimeoutSeconds)))
      (include "sluice.kafkaCommon" . | fromJson) -}}
{{- if $v.topics.replicationFactor -}}
{{- $_ := set $kafka "replication_factor" (int $v.topics.replicationFactor) -}}
{{- end -}}
{{- if $v.topics.minInsyncReplicas -}}
{{- if and $v.topics.replicationFactor (gt (int $v.topics.minInsyncReplicas) (int $v.topics.replicationFactor)) -}}
{{- fail (printf "topics.minInsyncReplicas (%d) must not exceed topics.replicationFactor (%d): no acks=all write could succeed" (int $v.topics.minInsyncReplicas) (int $v.topics.replicationFactor)) -}}
{{- end -}}
{{- $_ := set $kafka "min_insync_replicas" (int $v.topics.minInsyncReplicas) -}}
{{- end -}}
{{- $cfg := dict "kafka" $kafka "elasticsearch" $es
      "dead_letter" (dict "topic" $v.topics.deadLetter "partitions" (int $v.topics.deadLetterPartitions))
      "retention" (dict "days" (int $v.elasticsearch.retentionDays))
      "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.indexer.metricsPort))) -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy $v.indexer.config)) -}}
{{- end -}}

{{/* The rendered sluice-shipper.yaml. */}}
{{- define "sluice.shipperConfig" -}}
{{- $v := .Values -}}
{{- $k8s := dict "enabled" true "namespace_labels" $v.shipper.kubernetes.namespaceLabels -}}
{{- with $v.shipper.kubernetes.annotations -}}
{{- $_ := set $k8s "annotations" . -}}
{{- end -}}
{{- $cfg := dict "output" "kafka"
      "paths" (dict "root" "/var/log/pods" "symlink_dirs" (list "/var/log/containers"))
      "checkpoint" (dict "dir" "/var/lib/sluice")
      "kafka" (include "sluice.kafkaCommon" . | fromJson)
      "kubernetes" $k8s
      "metrics" (dict "listen" (printf "0.0.0.0:%d" (int $v.shipper.metricsPort))) -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy $v.shipper.config)) -}}
{{- end -}}
