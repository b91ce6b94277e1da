{{/* Labels on every object. */}}
{{- define "we-operator.labels" -}}
app.kubernetes.io/name: we-operator
app.kubernetes.io/part-of: kubernaut
{{- if not .Values.plainManifests }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}
{{- end }}

{{/* The pod selector (kept stable across upgrades). */}}
{{- define "we-operator.selector" -}}
app.kubernetes.io/name: we-operator
{{- end }}

{{/* The operator's ServiceAccount as the API server names its user. */}}
{{- define "we-operator.username" -}}
system:serviceaccount:{{ .Release.Namespace }}:we-operator
{{- end }}

{{/* The watched namespace ("*" for all). */}}
{{- define "we-operator.watch" -}}
{{- .Values.namespaces.watch | default .Release.Namespace }}
{{- end }}

{{/* The image reference, by digest when one is given. */}}
{{- define "we-operator.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion }}
{{- if .Values.image.digest }}
{{- printf "%s:%s@%s" .Values.image.repository $tag .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The admission policies' binding scope: the watched namespace, or every namespace. */}}
{{- define "we-operator.policyScope" -}}
{{- $watch := include "we-operator.watch" . }}
{{- if ne $watch "*" }}
matchResources:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: [{{ $watch | quote }}]
{{- end }}
{{- end }}
