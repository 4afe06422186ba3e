{{/* Name of every object: <release>-kafka. */}}
{{- define "kafka.fullname" -}}
{{- printf "%s-kafka" .Release.Name | trunc 52 | trimSuffix "-" -}}
{{- end -}}

{{- define "kafka.headless" -}}
{{- printf "%s-headless" (include "kafka.fullname" .) -}}
{{- end -}}

{{- define "kafka.selectorLabels" -}}
app.kubernetes.io/name: kafka
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "kafka.labels" -}}
{{ include "kafka.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: sluice
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* The static controller quorum: 0@<pod-0>.<headless>:9093,1@... */}}
{{- define "kafka.voters" -}}
{{- $voters := list -}}
{{- range $i := until (int .Values.replicas) -}}
{{- $voters = append $voters (printf "%d@%s-%d.%s.%s.svc:%d" $i (include "kafka.fullname" $) $i (include "kafka.headless" $) $.Release.Namespace (int $.Values.ports.controller)) -}}
{{- end -}}
{{- join "," $voters -}}
{{- end -}}
