{{/* The labels Helm adds to every object, on top of those config/ sets. */}}
{{- define "kms.helmLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end -}}

{{/* Labels of the operator's objects: config/default's, then Helm's. */}}
{{- define "kms.operatorLabels" -}}
app.kubernetes.io/name: kubevirt-metrics-operator
app.kubernetes.io/part-of: kubevirt-metrics-sidecars
{{ include "kms.helmLabels" . }}
{{- end -}}

{{- define "kms.image" -}}
{{ .Values.operator.image.repository }}:{{ .Values.operator.image.tag | default .Chart.AppVersion }}
{{- end -}}
