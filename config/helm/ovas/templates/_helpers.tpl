{{/*
Names and labels shared by every object. Each workload of the chart is a component
(`api` for ovas itself); "ovas.labels" and "ovas.selectorLabels" take
(dict "context" $ "component" "<name>"), so another component's objects get labels and
selectors of their own without touching the others'.
*/}}

{{- define "ovas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "ovas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* The name of a component's objects: the full name, suffixed for any but the API. */}}
{{- define "ovas.componentName" -}}
{{- $full := include "ovas.fullname" .context }}
{{- if eq .component "api" }}{{ $full }}{{ else }}{{ printf "%s-%s" $full .component | trunc 63 | trimSuffix "-" }}{{ end }}
{{- end }}

{{- define "ovas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ovas.name" .context }}
app.kubernetes.io/instance: {{ .context.Release.Name }}
{{- with .component }}
app.kubernetes.io/component: {{ . }}
{{- end }}
{{- end }}

{{/* Labels of every object; pass "component" for a workload's own objects. */}}
{{- define "ovas.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .context.Chart.Name .context.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ovas.selectorLabels" . }}
app.kubernetes.io/version: {{ .context.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ovas
app.kubernetes.io/managed-by: {{ .context.Release.Service }}
{{- end }}

{{- define "ovas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ovas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ovas.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Where sessions and the catalog live: settings.KUBERNETES_NAMESPACE, else the release's. */}}
{{- define "ovas.sessionNamespace" -}}
{{- default .Release.Namespace .Values.settings.KUBERNETES_NAMESPACE }}
{{- end }}

{{/*
A setting's environment variable: OVAS_<NAME>, but for the few settings read by
something other than ovas under their own names (ovas/config.py, Setting.app).
*/}}
{{- define "ovas.variable" -}}
{{- if has . (list "DOCKER_HOST" "KUBECONFIG" "PROMETHEUS_MULTIPROC_DIR") }}{{ . }}{{ else }}{{ printf "OVAS_%s" . }}{{ end }}
{{- end }}

{{/*
A setting's value as the environment holds it. Numbers from a values file arrive as
float64 (printed 3.1536e+07 otherwise); the schema has made sure they are whole.
*/}}
{{- define "ovas.text" -}}
{{- if kindIs "float64" . }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- end }}

{{/* The Secret holding secretSettings.values. */}}
{{- define "ovas.settingsSecretName" -}}
{{- printf "%s-settings" (include "ovas.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the API keys file: apiKeys.existingSecret, else the chart's. */}}
{{- define "ovas.apiKeysSecretName" -}}
{{- default (printf "%s-apikeys" (include "ovas.fullname" .) | trunc 63 | trimSuffix "-") .Values.apiKeys.existingSecret }}
{{- end }}

{{- define "ovas.apiKeysEnabled" -}}
{{- if or .Values.apiKeys.entries .Values.apiKeys.existingSecret }}true{{ end }}
{{- end }}

{{/* Settings given two ways at once are refused: which one wins would be a guess. */}}
{{- define "ovas.checkSettings" -}}
{{- range $name, $_ := .Values.secretSettings.values }}
{{- if or (hasKey $.Values.settings $name) (hasKey $.Values.secretSettings.fromSecrets $name) }}
{{- fail (printf "settings.%s is given twice: keep it in settings or in secretSettings, not both" $name) }}
{{- end }}
{{- end }}
{{- range $name, $_ := .Values.secretSettings.fromSecrets }}
{{- if hasKey $.Values.settings $name }}
{{- fail (printf "settings.%s is given twice: keep it in settings or in secretSettings.fromSecrets, not both" $name) }}
{{- end }}
{{- end }}
{{- if and (include "ovas.apiKeysEnabled" .) (or (hasKey .Values.settings "APIKEYS_FILE") (hasKey .Values.secretSettings.values "APIKEYS_FILE") (hasKey .Values.secretSettings.fromSecrets "APIKEYS_FILE")) }}
{{- fail "settings.APIKEYS_FILE is set by apiKeys: give one or the other" }}
{{- end }}
{{- if and .Values.apiKeys.entries .Values.apiKeys.existingSecret }}
{{- fail "apiKeys: give entries or existingSecret, not both" }}
{{- end }}
{{- end }}
